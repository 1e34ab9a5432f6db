"""Stopping a long-running command (a server, `imgsearch up`, `imgsearch web`) on SIGTERM or
Ctrl-C, the same way everywhere; needs nothing beyond the standard library."""

from __future__ import annotations

import signal
import threading

# How often a waiting main thread looks for a signal another thread took (see SignalStop).
_POLL_S = 0.5


class SignalStop(threading.Event):
    """The event SIGTERM and SIGINT set. Its wait() without a timeout still wakes every
    _POLL_S: the kernel may hand a process's signal to any of its threads (gRPC's, torch's), and
    then Python only runs the handler once the main thread runs Python code again; a main
    thread blocked in a plain Event.wait() never would, and the process would ignore SIGTERM
    (seen once: a searcher that did not stop in 120 s)."""

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            return super().wait(timeout)
        while not super().wait(_POLL_S):
            pass
        return True


def stop_on_signals() -> SignalStop:
    """An event that SIGTERM and SIGINT set. Installed at once, so a signal that arrives while
    the service is still starting is kept, and the caller stops as soon as it has started."""
    stop = SignalStop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
