"""How the client opens a channel: plaintext or TLS (optionally with a client certificate for
mutual TLS), and a bearer token on every call when one is configured."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from imgsearch.errors import InvalidArgument


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
        env = os.environ if environ is None else environ
        ca, cert, key = (env.get(f"IMGSEARCH_TLS_{n}", "") for n in ("CA", "CERT", "KEY"))
        tls = env.get("IMGSEARCH_TLS", "").lower() in ("1", "true", "yes") or bool(ca or cert)
        return cls(tls, ca, cert, key, env.get("IMGSEARCH_TOKEN", ""))

    def credentials(self) -> grpc.ChannelCredentials | None:
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


def open_channel(
    target: str, options: list[tuple[str, Any]], security: ChannelSecurity
) -> grpc.Channel:
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
