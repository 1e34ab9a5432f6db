"""What both servers share and the client never imports: TLS and tokens (`security`), the RPC
guard with its limits and metrics (`guard`, `metrics`), configuration (`config`), process
lifecycle (`lifecycle`), the health probe command (`healthcheck`) and the local stack behind
`imgsearch up` / `imgsearch demo` (`local_stack`).

Each server-side package checks on import that its extra is installed (imgsearch._extras).
"""

from imgsearch._extras import MissingExtra, require_extra

__all__ = ["MissingExtra", "require_extra"]

require_extra("server", "grpc_health", "grpc_reflection", "prometheus_client")
