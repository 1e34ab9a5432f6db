"""What every long-running imgsearch process does the same way: log lines, and stopping on
SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command it runs


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set. Installed at once, so a signal that arrives while
    the service is still starting is kept, and the caller stops as soon as it has started."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
