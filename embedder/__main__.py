"""`imgsearch-embedder`: serve imgsearch.v1.EmbedderService until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from embedder.config import parse_config
from embedder.model import ModelLoadError
from embedder.server import Embedder
from serving.lifecycle import configure_logging, stop_on_signals


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_format)
    stop = stop_on_signals()
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
