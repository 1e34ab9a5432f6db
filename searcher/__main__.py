"""`imgsearch-searcher`: serve imgsearch.v1.SearcherService until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from searcher.config import parse_config
from searcher.server import Searcher


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command it runs
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
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
