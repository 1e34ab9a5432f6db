"""RPC metrics every server keeps, and the Prometheus endpoint that serves them."""

from __future__ import annotations

import logging

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)


class RpcMetrics:
    """RPC counts by method and status, and latency by method, in the service's own registry
    (two services in one process, as `imgsearch up` runs them, must not share one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "imgsearch_rpc_requests",
            "RPCs finished, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "imgsearch_rpc_duration_seconds",
            "RPC time in the server, by method",
            ["method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge(
            "imgsearch_rpc_in_flight", "RPCs being served now", registry=registry
        )

    def record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        name = method.lstrip("/")
        self.requests.labels(name, code.name).inc()
        self.seconds.labels(name).observe(seconds)


class MetricsEndpoint:
    """Prometheus's text format over HTTP at /metrics, on `address` ("host:port"; port 0 picks
    a free one)."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        self._httpd, self._thread = start_http_server(int(port), addr=host, registry=registry)
        self.port: int = self._httpd.server_port
        logger.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
