"""The one `main` of both services' console scripts: parse the configuration, log, start, serve
until SIGTERM or Ctrl-C, stop gracefully. A service that cannot start says why in one line and
exits with status 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from imgsearch.errors import StartupError
from serving.config import ServingConfig
from serving.lifecycle import configure_logging, stop_on_signals

logger = logging.getLogger(__name__)


class Service(Protocol):
    port: int

    def stop(self) -> None: ...


C = TypeVar("C", bound=ServingConfig)


def run_service(prog: str, parse: Callable[[], C], start: Callable[[C], Service]) -> int:
    """Serve what `start` starts from the configuration `parse` reads; the exit status."""
    try:
        config = parse()
        configure_logging(config.log_format)
        stop = stop_on_signals()
        service = start(config)
    except StartupError as exc:
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return 2
    print(f"{prog} listening on port {service.port}", flush=True)
    try:
        stop.wait()
        logger.info("shutting down (grace %.0f s)", config.grace_s)
    finally:
        service.stop()
    return 0
