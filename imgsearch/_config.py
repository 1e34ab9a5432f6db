"""Service configuration from a frozen dataclass: CLI flags, then environment variables, then
the dataclass defaults. Each service has its own variable prefix, so one shell (or `imgsearch up`)
can configure both without collisions; a few well-known names are shared on purpose."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


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
