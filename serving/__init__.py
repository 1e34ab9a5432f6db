"""What both servers share and the client never imports: TLS and tokens (`security`), the RPC
guard with its limits and metrics (`guard`, `metrics`), configuration (`config`), process
lifecycle (`lifecycle`), the health probe command (`healthcheck`) and the local stack behind
`imgsearch up` / `imgsearch demo` (`local_stack`).

One wheel ships the client and both servers; the servers' dependencies come with extras. So each
server-side package checks on import that its extra is installed and, when it is not, says which
one to install instead of failing later on some module deep inside.
"""

from __future__ import annotations

import importlib.util


class MissingExtra(ImportError):
    pass


def require_extra(extra: str, *modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(
            f"{', '.join(missing)} not installed: this part of imgsearch needs "
            f"pip install 'imgsearch[{extra}]'"
        )


require_extra("server", "grpc_health", "grpc_reflection", "prometheus_client")
