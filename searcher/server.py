"""The searcher's gRPC server: servicer, health, reflection, and the database watch."""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_limits

from imgsearch.errors import ImageSearchError
from imgsearch.v1 import searcher_pb2, searcher_pb2_grpc
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.metrics import SearcherMetrics
from searcher.pool import BULK_NICE, ConnectionPool
from searcher.service import WRITE_METHODS, SearcherServicer
from searcher.settings import StoreSettings
from searcher.store import VectorStore
from serving.metrics import MetricsEndpoint
from serving.server import add_maintenance_and_bind, server_settings

logger = logging.getLogger(__name__)

# Threads beyond max_concurrent_rpcs, for health checks and for refusing RPCs over the limit.
SPARE_THREADS = 8

SERVICE_NAME = searcher_pb2.DESCRIPTOR.services_by_name["SearcherService"].full_name


class DatabaseWatch:
    """Reports SERVING while the database answers and NOT_SERVING while it does not.

    The first successful check also applies migrations, so a searcher started before its
    database comes up starts serving once it does, with no restart.
    """

    def __init__(
        self, store: VectorStore, health_servicer: health.HealthServicer, interval_s: float = 1.0
    ) -> None:
        self.store = store
        self.health = health_servicer
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._opened = False
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="database-watch", daemon=True)

    def start(self) -> None:
        self.check()
        self._thread.start()

    def check(self) -> bool:
        try:
            if not self._opened:
                self.store.open()
                self._opened = True
            self.store.pool.check()
            serving = True
        except ImageSearchError as exc:
            serving = False
            if self._serving is not False:
                logger.warning("database unreachable, NOT_SERVING: %s", exc)
        if serving and self._serving is not True:
            logger.info("database reachable, SERVING")
            if self._serving is False:
                self.store.resume()  # upkeep an outage cut short (a fold) goes on
        self._serving = serving
        if not self._stop.is_set():
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in ("", SERVICE_NAME):
                self.health.set(service, status)
        return serving

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def build_server(
    config: SearcherConfig, store: VectorStore, metrics: SearcherMetrics | None = None
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server bound to config.address (port 0 picks a free one), not yet started; health
    says NOT_SERVING until the database watch has seen the database."""
    guard, options = server_settings(config, metrics=metrics, write_methods=WRITE_METHODS)
    server = grpc.server(
        # Spare threads beyond the limit: health checks and quick refusals always get one.
        futures.ThreadPoolExecutor(
            max_workers=config.max_concurrent_rpcs + SPARE_THREADS, thread_name_prefix="rpc"
        ),
        interceptors=[guard.interceptor()],
        options=options,
    )
    searcher_pb2_grpc.add_SearcherServiceServicer_to_server(
        SearcherServicer(store, metrics), server
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = add_maintenance_and_bind(server, config, SERVICE_NAME, health_servicer)
    return server, port, health_servicer


class Searcher:
    """The whole searcher with one lifecycle: database (embedded unless a DSN is configured),
    pool, store, gRPC server and database watch. Used by the CLI, the tests and the benchmarks."""

    def __init__(self, config: SearcherConfig) -> None:
        self.config = config
        self.port = 0
        self._embedded: EmbeddedPostgres | None = None
        self._server: grpc.Server | None = None
        self._watch: DatabaseWatch | None = None
        self.store: VectorStore | None = None
        self.metrics: SearcherMetrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_port = 0

    def start(self) -> Searcher:
        """Start the database (embedded unless a DSN is configured) and serve; what started is
        stopped again when a later part cannot start (a port taken, a TLS file missing)."""
        settings = self.config.store_settings()  # a bad setting fails before anything starts
        try:
            self._start(settings)
        except BaseException:
            self.stop(grace_s=0)
            raise
        logger.info("searcher serving on port %d", self.port)
        return self

    def _start(self, settings: StoreSettings) -> None:
        config = self.config
        # numpy's BLAS runs each product on a thread per core, and its threads spin between
        # products: assigning 16 written rows their cells (16x1000 by 1000x256) took 965 us on
        # this machine's 2 threads against 178 us on one, and the spinning took the cores that
        # searches needed. The searcher's products are small: one thread for them all.
        threadpool_limits(1, user_api="blas")
        dsn = config.dsn
        if not dsn and not _libpq_environment():
            self._embedded = EmbeddedPostgres(config.resolved_data_dir())
            dsn = self._embedded.start()
        pool = ConnectionPool(
            dsn,
            max_size=config.pool_size,
            statement_timeout_ms=config.statement_timeout_ms,
            # The embedded server's backends are processes of this machine: bulk work yields.
            bulk_nice=BULK_NICE if self._embedded is not None else 0,
        )
        self.store = VectorStore(pool, settings)
        self.metrics = SearcherMetrics(CollectorRegistry(), pool)
        self.store.shadow.listeners.append(self.metrics.observe_shadow_query)
        if config.metrics_address:
            self._metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics_address)
            self.metrics_port = self._metrics_endpoint.port
        self._server, self.port, health_servicer = build_server(config, self.store, self.metrics)
        self._watch = DatabaseWatch(self.store, health_servicer)
        self._watch.start()
        self._server.start()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish (up to the grace period), release all."""
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._watch is not None:
            self._watch.stop()
            for service in ("", SERVICE_NAME):
                self._watch.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            self._server.stop(grace).wait()
        if self.store is not None:
            self.store.close()
            self.store.pool.close()
        if self._embedded is not None:
            self._embedded.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        self._server = self._watch = self._embedded = self._metrics_endpoint = None

    def __enter__(self) -> Searcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _libpq_environment() -> bool:
    """True when standard PG* variables name a server (libpq then connects with an empty DSN)."""
    return any(os.environ.get(v) for v in ("PGHOST", "PGSERVICE", "PGDATABASE", "PGPORT"))
