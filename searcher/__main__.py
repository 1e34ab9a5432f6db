"""`imgsearch-searcher`: serve imgsearch.v1.SearcherService until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from imgsearch._lifecycle import configure_logging, stop_on_signals
from searcher.config import parse_config
from searcher.server import Searcher


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_format)
    stop = stop_on_signals()
    searcher = Searcher(config).start()
    print(f"imgsearch-searcher listening on port {searcher.port}", flush=True)
    try:
        stop.wait()
        logging.getLogger(__name__).info("shutting down (grace %.0f s)", config.grace_s)
    finally:
        searcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
