"""`imgsearch-searcher`: serve imgsearch.v1.SearcherService until SIGTERM or Ctrl-C.

`--upgrade-data-dir` first upgrades an embedded data directory made by the old engine
(PostgreSQL 16) in place with pg_upgrade, then serves it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from searcher.config import SearcherConfig, parse_config
from searcher.embedded import upgrade_data_dir
from searcher.server import Searcher
from serving.main import run_service

UPGRADE_FLAG = "--upgrade-data-dir"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    upgrade = UPGRADE_FLAG in args
    if upgrade:
        args.remove(UPGRADE_FLAG)

    def start(config: SearcherConfig) -> Searcher:
        if upgrade:
            upgrade_data_dir(config.resolved_data_dir())
        return Searcher(config).start()

    return run_service("imgsearch-searcher", lambda: parse_config(args), start)


if __name__ == "__main__":
    sys.exit(main())
