"""Who may call: TLS server credentials (mutual TLS with a client CA), and bearer tokens with
read and write roles. Tokens come from the environment or a file, never from flags (flags show
in `ps`)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from imgsearch.errors import ConfigError

TOKEN_ENV = "IMGSEARCH_TOKEN"
READ_TOKEN_ENV = "IMGSEARCH_READ_TOKEN"
ROLES = ("read", "write")


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """TLS when a certificate and key are given; mutual TLS (client certificates required and
    checked against `client_ca`) when a CA is given too. None: plaintext."""
    if not cert and not key:
        if client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=_read(client_ca, "client CA") if client_ca else None,
        require_client_auth=bool(client_ca),
    )


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


class Tokens:
    """Bearer tokens and their roles: "write" may call everything, "read" everything but the
    methods that change data."""

    def __init__(self, roles: Mapping[str, str]) -> None:
        self._roles = [(token.encode(), role) for token, role in roles.items()]

    @classmethod
    def load(cls, tokens_file: str = "", environ: Mapping[str, str] | None = None) -> Tokens | None:
        """Tokens from IMGSEARCH_TOKEN (write), IMGSEARCH_READ_TOKEN (read) and `tokens_file`
        (lines "write TOKEN" or "read TOKEN"; # comments). None when none is configured: no auth."""
        environ = os.environ if environ is None else environ
        roles: dict[str, str] = {}
        if environ.get(TOKEN_ENV):
            roles[environ[TOKEN_ENV]] = "write"
        if environ.get(READ_TOKEN_ENV):
            roles[environ[READ_TOKEN_ENV]] = "read"
        if tokens_file:
            text = _read(tokens_file, "tokens file").decode()
            for number, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2 or parts[0] not in ROLES:
                    raise ConfigError(
                        f"{tokens_file} line {number}: expected 'read TOKEN' or 'write TOKEN'"
                    )
                roles[parts[1]] = parts[0]
        return cls(roles) if roles else None

    def role_of(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        offered = _bearer_token(metadata)
        if offered is None:
            return None
        role = None
        for token, token_role in self._roles:  # compare with all: no timing hint of which
            if hmac.compare_digest(token, offered):
                role = token_role
        return role


def _bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip().encode()
    return None
