"""`imgsearch-searcher`: serve imgsearch.v1.SearcherService until SIGTERM or Ctrl-C.

`--upgrade-data-dir` first upgrades an embedded data directory made by the old engine
(PostgreSQL 16) in place with pg_upgrade, then serves it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from searcher.config import parse_config
from searcher.embedded import EmbeddedDatabaseError, upgrade_data_dir
from searcher.server import Searcher
from serving.lifecycle import configure_logging, stop_on_signals

UPGRADE_FLAG = "--upgrade-data-dir"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    upgrade = UPGRADE_FLAG in args
    if upgrade:
        args.remove(UPGRADE_FLAG)
    config = parse_config(args)
    configure_logging(config.log_format)
    stop = stop_on_signals()
    try:
        if upgrade:
            upgrade_data_dir(config.resolved_data_dir())
        searcher = Searcher(config).start()
    except EmbeddedDatabaseError as exc:
        print(f"imgsearch-searcher: {exc}", file=sys.stderr)
        return 2
    print(f"imgsearch-searcher listening on port {searcher.port}", flush=True)
    try:
        stop.wait()
        logging.getLogger(__name__).info("shutting down (grace %.0f s)", config.grace_s)
    finally:
        searcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
