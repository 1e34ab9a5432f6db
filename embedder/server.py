"""The embedder as one unit with a lifecycle: model, batcher, gRPC asyncio server, health.

The server runs its own event loop in a background thread, so the CLI, `imgsearch up`, tests and
benchmarks all drive it the same way: Embedder(config).start() … stop().
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from embedder.batcher import Batcher
from embedder.calibration import DuplicateDistances, calibrate_heads
from embedder.config import EmbedderConfig
from embedder.metrics import embedder_metrics
from embedder.service import SERVICE_NAME, EmbedderServicer
from embedder.spec import Model, ModelInfo
from imgsearch._extras import require_extra
from imgsearch.errors import MissingExtra, ModelLoadError
from imgsearch.v1 import embedder_pb2_grpc
from serving.metrics import MetricsEndpoint, RpcMetrics
from serving.server import add_maintenance_and_bind, server_settings

logger = logging.getLogger(__name__)


def load_model(config: EmbedderConfig) -> Model:
    """The configured model: an exported ONNX file (no torch), or a torchvision model; each
    forward pass on its share of the threads (EmbedderConfig.forward_plan)."""
    if config.model_file:
        from embedder.onnx_file import OnnxFileModel

        return OnnxFileModel(config.model_file, config.forward_plan("cpu").threads)
    try:
        require_extra("embedder", "torch", "torchvision")
    except MissingExtra as exc:
        raise ModelLoadError(
            f"{exc}; or serve a model exported with imgsearch-embedder-export: --model-file FILE"
        ) from None
    from embedder.model import EmbeddingModel, resolve_device

    return EmbeddingModel(config.model_spec(resolve_device(config.device).type))


class Embedder:
    """The embedder with one lifecycle: start() loads and warms the model and serves; stop()
    drains and releases everything. Used by the console script, the local stack, the tests and
    the benchmarks alike."""

    def __init__(self, config: EmbedderConfig, model: Model | None = None) -> None:
        self.config = config
        self.model = model
        self.port = 0
        self.batcher: Batcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self.metrics: RpcMetrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_port = 0
        # Each head's, by name; empty when not measured (--duplicate-probes 0).
        self.duplicates: dict[str, DuplicateDistances] = {}

    @property
    def model_info(self) -> ModelInfo:
        if self.model is None:
            raise RuntimeError("the embedder is not started")
        return self.model.info

    def start(self) -> Embedder:
        """Load and warm the model, then serve; health is SERVING once this returns."""
        if self.model is None:
            self.model = load_model(self.config)
        batcher_config = self.config.batcher_config(self.model.device_type)
        self.model.warm_up(batcher_config.max_batch_size)
        if self.config.duplicate_probes > 0:
            self.duplicates = calibrate_heads(
                self.model.forward,
                self.model.preprocess,
                self.config.duplicate_probes,
                self.model.info.heads,
            )
        self.batcher = Batcher(
            self.model.forward,
            batcher_config,
            self.config.decode_limits(),
            prepare=self.model.preprocess,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="embedder-loop", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.stop(grace_s=0)  # e.g. a TLS file that cannot be read: release what started
            raise
        logger.info("embedder serving on port %d", self.port)
        return self

    async def _start(self) -> None:
        config = self.config
        assert self.batcher is not None and self.model is not None
        await self.batcher.start()
        self.metrics = embedder_metrics(self.batcher)
        if config.metrics_address:
            self._metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics_address)
            self.metrics_port = self._metrics_endpoint.port
        guard, options = server_settings(config, metrics=self.metrics)
        server = grpc.aio.server(interceptors=[guard.aio_interceptor()], options=options)
        servicer = EmbedderServicer(
            self.batcher,
            self.model.info,
            duplicates=self.duplicates,
            max_images_per_request=config.max_images_per_request,
            stream_window_images=max(64, 4 * self.batcher.config.max_batch_size),
        )
        embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, server)
        self._health = health.aio.HealthServicer()
        self.port = add_maintenance_and_bind(server, config, SERVICE_NAME, self._health)
        await server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new RPCs, let in-flight ones finish (up to the grace period)."""
        if self._loop is None:
            return
        grace = self.config.grace_s if grace_s is None else grace_s
        try:
            self._call(self._stop(grace), timeout=grace + 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = self._server = None
            if self._metrics_endpoint is not None:
                self._metrics_endpoint.stop()
                self._metrics_endpoint = None

    async def _stop(self, grace: float) -> None:
        if self._health is not None:
            for service in ("", SERVICE_NAME):
                await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        if self.batcher is not None:
            await self.batcher.stop(grace_s=1.0)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _call(self, coroutine: Any, timeout: float | None = 120) -> Any:
        assert self._loop is not None
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            coroutine, self._loop
        )
        return future.result(timeout)

    def __enter__(self) -> Embedder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
