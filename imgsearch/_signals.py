"""Stopping a long-running command (a server, `imgsearch up`, `imgsearch web`) on SIGTERM or
Ctrl-C, the same way everywhere; needs nothing beyond the standard library."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set. Installed at once, so a signal that arrives while
    the service is still starting is kept, and the caller stops as soon as it has started."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
