"""How the client reaches a service: the target (one address, replicas, or a DNS name), the
channel (plaintext or TLS, optionally with a client certificate for mutual TLS, a bearer token
on every call when one is configured), and what a failed call means (`Service.error`)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from imgsearch import defaults
from imgsearch._status import error_from_rpc
from imgsearch.errors import ImageSearchError, InvalidArgument, ServiceUnreachable

# Embed is idempotent: retry UNAVAILABLE (a replica restarting, a connection reset),
# RESOURCE_EXHAUSTED (its queue is full) and CANCELLED (a replica that began stopping just as the
# call reached it cancels it unanswered; a call this client cancels is never retried) with
# backoff; round_robin sends the retry to another replica when there is one.
EMBEDDER_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "imgsearch.v1.EmbedderService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"],
                },
            }
        ],
    }
)

# What gRPC's core says when no connection could be made at all (as opposed to a server that
# answered UNAVAILABLE itself, e.g. a searcher whose database is down).
_CONNECT_FAILURES = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "dns resolution failed",
    "connection refused",
    "handshake failed",
    "socket closed",
    "errors resolving",
)


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS and token settings of the client. `from_env` reads IMGSEARCH_TLS (1: TLS with the
    system's roots), IMGSEARCH_TLS_CA, IMGSEARCH_TLS_CERT, IMGSEARCH_TLS_KEY and IMGSEARCH_TOKEN."""

    tls: bool = False
    ca_file: str = ""  # PEM roots to trust; empty: the system's
    cert_file: str = ""  # client certificate, for servers that require one (mutual TLS)
    key_file: str = ""
    token: str = ""  # sent as "authorization: Bearer <token>"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChannelSecurity:
        """The settings the IMGSEARCH_TLS* and IMGSEARCH_TOKEN variables give."""
        env = os.environ if environ is None else environ
        ca, cert, key = (env.get(f"IMGSEARCH_TLS_{n}", "") for n in ("CA", "CERT", "KEY"))
        tls = env.get("IMGSEARCH_TLS", "").lower() in ("1", "true", "yes") or bool(ca or cert)
        return cls(tls, ca, cert, key, env.get("IMGSEARCH_TOKEN", ""))

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for plaintext."""
        if not self.tls:
            return None
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidArgument("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if self.key_file else None,
            certificate_chain=_read(self.cert_file) if self.cert_file else None,
        )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None


def channel_target(addresses: str) -> str:
    """A gRPC target for one address, a comma-separated list of replicas, or a dns:/// name."""
    addresses = addresses.strip()
    if "://" in addresses or addresses.startswith(("ipv4:", "ipv6:", "unix:")):
        return addresses
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if len(parts) == 1:
        return parts[0]
    resolved = []
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"address {part!r} is not host:port")
        infos = socket.getaddrinfo(host.strip("[]"), int(port), socket.AF_INET, socket.SOCK_STREAM)
        resolved += [f"{info[4][0]}:{port}" for info in infos[:1]]
    return "ipv4:" + ",".join(resolved)


@dataclass(frozen=True)
class Service:
    """One of the two services as the client reaches it."""

    name: str  # "embedder" or "searcher": also the CLI flag that sets its address
    address: str
    channel: grpc.Channel

    @classmethod
    def connect(
        cls, name: str, address: str, security: ChannelSecurity, service_config: str | None = None
    ) -> Service:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", defaults.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", defaults.MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 1),
        ]
        if service_config is not None:
            options.append(("grpc.service_config", service_config))
        return cls(name, address, open_channel(channel_target(address), options, security))

    def error(self, exc: grpc.RpcError) -> ImageSearchError:
        """The imgsearch error for a failed call; one that never reached the service says
        which service, where, and what to do about it."""
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.UNAVAILABLE and any(
            failure in details.lower() for failure in _CONNECT_FAILURES
        ):
            reason = details.rsplit(": ", 1)[-1].strip(" []") or "no connection"
            return ServiceUnreachable(
                f"cannot reach the {self.name} at {self.address} ({reason}). Start both "
                f"services on this machine with `imgsearch up`, or point --{self.name} "
                f"(env IMGSEARCH_{self.name.upper()}) at a running {self.name}"
            )
        return error_from_rpc(exc)


def open_channel(
    target: str, options: list[tuple[str, Any]], security: ChannelSecurity
) -> grpc.Channel:
    """A channel to `target` with `options`, secured and carrying the token as `security` says."""
    credentials = security.credentials()
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    if security.token:
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token to every call's metadata. (Call credentials would refuse plaintext
    channels; a token on plaintext is the deployer's choice, e.g. inside a private network.)"""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any
