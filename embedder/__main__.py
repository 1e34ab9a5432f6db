"""`imgsearch-embedder`: serve imgsearch.v1.EmbedderService until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from embedder.config import parse_config
from embedder.model import ModelLoadError
from embedder.server import Embedder


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        embedder = Embedder(config).start()
    except ModelLoadError as exc:
        print(f"imgsearch-embedder: cannot start: {exc}", file=sys.stderr)
        return 2
    print(f"imgsearch-embedder listening on port {embedder.port}", flush=True)
    try:
        stop.wait()
        logging.getLogger(__name__).info("shutting down (grace %.0f s)", config.grace_s)
    finally:
        embedder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
