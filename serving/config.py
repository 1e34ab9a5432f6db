"""Service configuration from a frozen dataclass: CLI flags, then environment variables, then
the dataclass defaults. Each service has its own variable prefix, so one shell (or `imgsearch up`)
can configure both without collisions; a few well-known names are shared on purpose."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from imgsearch import defaults
from imgsearch.errors import ConfigError
from serving.security import READ_TOKEN_ENV, TOKEN_ENV

T = TypeVar("T")


@dataclass(frozen=True)
class ServingConfig:
    """The settings every server has; each service's config dataclass extends this one (and
    gives `address` and `max_concurrent_rpcs` its own defaults)."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tokens_file: str = ""
    metrics_address: str = ""
    log_format: str = "text"
    address: str = ""
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 64
    grace_s: float = 10.0


SERVING_HELP = {
    "tls_cert": "PEM certificate chain: serve TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "tokens_file": "file of bearer tokens, one 'read TOKEN' or 'write TOKEN' per line; with "
    f"{TOKEN_ENV} / {READ_TOKEN_ENV} set or this file given, every RPC but health needs a token",
    "metrics_address": "host:port for Prometheus /metrics over HTTP (empty: off)",
    "log_format": "text or json (one JSON object per line)",
    "address": "host:port to serve on",
    "max_message_bytes": "largest gRPC message accepted",
    "max_concurrent_rpcs": "RPCs served at once; more get RESOURCE_EXHAUSTED",
    "grace_s": "seconds in-flight RPCs get to finish on shutdown",
}


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: `least` to `most`, and 0 too where `zero` says
    what 0 means (off, the default choice)."""

    least: float
    most: float = math.inf
    zero: str = ""

    def allows(self, value: float) -> bool:
        return (value == 0 and bool(self.zero)) or self.least <= value <= self.most

    def __str__(self) -> str:
        if self.most < math.inf:
            return f"from {_number(self.least)} to {_number(self.most)}"
        if self.zero:
            more = "more" if self.least <= 1 else f"at least {_number(self.least)}"
            return f"0 ({self.zero}) or {more}"
        return "0 or more" if self.least == 0 else f"at least {_number(self.least)}"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


# The ranges of the settings every server has: a server started outside them would refuse every
# message, every RPC, or never let its RPCs finish.
SERVING_RANGES = {
    "max_message_bytes": Range(1024, 2**31 - 1),
    "max_concurrent_rpcs": Range(1),
    "grace_s": Range(0),
}


def check_ranges(config: Any, ranges: Mapping[str, Range], env_name: Callable[[str], str]) -> None:
    """ConfigError for the first setting of `config` outside its range, naming its flag and its
    variable: a value that cannot work is refused at start, not met at the first request."""
    for name, allowed in {**SERVING_RANGES, **ranges}.items():
        value = getattr(config, name)
        if not allowed.allows(value):
            flag = f"--{name.replace('_', '-')} ({env_name(name)})"
            raise ConfigError(f"{flag} must be {allowed}, not {value}")


def env_name(prefix: str, field_name: str, shared: Mapping[str, str] = {}) -> str:
    """The environment variable of a setting: PREFIX_FIELD_NAME, or its shared name."""
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
    secrets are never shown in --help. A variable that does not parse raises ConfigError."""
    environ = os.environ if environ is None else environ
    initial = cls()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):  # type: ignore[arg-type]
        default = getattr(initial, f.name)
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
        raise ConfigError(f"{env}={text!r} is not a valid {kind.__name__}") from None
