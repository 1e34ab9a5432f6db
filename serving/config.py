"""Service configuration from a frozen dataclass: CLI flags, then environment variables, then
the dataclass defaults. Each service has its own variable prefix, so one shell (or `imgsearch up`)
can configure both without collisions; a few well-known names are shared on purpose."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from serving.security import READ_TOKEN_ENV, TOKEN_ENV

T = TypeVar("T")


@dataclass(frozen=True)
class ServingConfig:
    """The settings every server has; each service's config dataclass extends this one."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens_file: str = ""
    metrics_address: str = ""
    log_format: str = "text"


SERVING_HELP = {
    "tls_cert": "PEM certificate chain: serve TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "tokens_file": "file of bearer tokens, one 'read TOKEN' or 'write TOKEN' per line; with "
    f"{TOKEN_ENV} / {READ_TOKEN_ENV} set or this file given, every RPC but health needs a token",
    "metrics_address": "host:port for Prometheus /metrics over HTTP (empty: off)",
    "log_format": "text or json (one JSON object per line)",
}


def env_name(prefix: str, field_name: str, shared: Mapping[str, str] = {}) -> str:
    return shared.get(field_name, prefix + field_name.upper())


def parse_dataclass_config(
    cls: type[T],
    *,
    prog: str,
    description: str,
    help: Mapping[str, str],
    prefix: str,
    shared_env: Mapping[str, str] = {},
    secrets: frozenset[str] = frozenset(),
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Parse argv into `cls`. Every field is a flag (--field-name) and an environment variable;
    secrets are never shown in --help."""
    environ = os.environ if environ is None else environ
    defaults = cls()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):  # type: ignore[arg-type]
        default = getattr(defaults, f.name)
        env = env_name(prefix, f.name, shared_env)
        value: Any = _convert(type(default), environ[env], env) if env in environ else default
        shown = "(hidden)" if f.name in secrets and value else value
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=value,
            help=f"{help[f.name]} [env {env}; default: {shown!s}]",
        )
    args = parser.parse_args(argv)
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _convert(kind: type, text: str, env: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise SystemExit(f"{env}={text!r} is not a valid {kind.__name__}") from None
