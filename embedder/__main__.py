"""`imgsearch-embedder`: serve imgsearch.v1.EmbedderService until SIGTERM or Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from embedder.config import EmbedderConfig, parse_config
from embedder.server import Embedder
from serving.main import run_service


def main(argv: Sequence[str] | None = None) -> int:
    def start(config: EmbedderConfig) -> Embedder:
        return Embedder(config).start()

    return run_service("imgsearch-embedder", lambda: parse_config(argv), start)


if __name__ == "__main__":
    sys.exit(main())
