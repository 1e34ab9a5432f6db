"""uvicorn serving the search page from a thread of this process: `imgsearch web` runs only
this, `imgsearch up --web` runs it beside the services. start() returns once it listens."""

from __future__ import annotations

import ipaddress
import threading
import time

import uvicorn
from starlette.applications import Starlette

DEFAULT_ADDRESS = "127.0.0.1:8080"


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or ":port" (loopback)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebServer:
    def __init__(self, app: Starlette, address: str = DEFAULT_ADDRESS) -> None:
        self.host, port = split_address(address)
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=self.host, port=port, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout_s: float = 30) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:  # uvicorn offers no event to wait on
            if not self._thread.is_alive():
                raise OSError("uvicorn stopped before listening; its log line above says why")
            if time.monotonic() > deadline:
                raise TimeoutError("the search page did not start")
            time.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
