"""What every imgsearch server gets the same way, in one place (as grpc's xds example configures
its maintenance services): the guard and message limits it is created with, health and
reflection beside its own service, and its port, bound with TLS when configured."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imgsearch.errors import ConfigError
from serving.config import ServingConfig
from serving.guard import RpcGuard, message_size_options
from serving.metrics import RpcMetrics
from serving.security import Tokens, server_credentials


def server_settings(
    config: ServingConfig,
    *,
    metrics: RpcMetrics | None = None,
    write_methods: frozenset[str] = frozenset(),
) -> tuple[RpcGuard, list[tuple[str, int]]]:
    """The guard (tokens, limits, metrics) and the gRPC options a server is created with."""
    guard = RpcGuard(
        max_concurrent_rpcs=config.max_concurrent_rpcs,
        max_message_bytes=config.max_message_bytes,
        write_methods=write_methods,
        tokens=Tokens.load(config.tokens_file),
        metrics=metrics,
    )
    return guard, message_size_options(config.max_message_bytes)


def add_maintenance_and_bind(
    server: Any, config: ServingConfig, service_name: str, health_servicer: Any
) -> int:
    """Add health and reflection to `server` (a grpc or grpc.aio server, not yet started) and
    bind it to config.address, with TLS when configured; the port it got (port 0 picks one)."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    try:
        if credentials is None:
            port: int = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {config.address}: {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {config.address}")
    return port
