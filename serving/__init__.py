"""What both servers share and the client never imports: configuration (`config`), the RPC guard
with its limits and metrics (`guard`, `metrics`), TLS and tokens (`security`), health, reflection
and binding (`server`), one main for both console scripts (`main`), process lifecycle
(`lifecycle`) and the health probe command (`healthcheck`). It imports no service.

Each server-side package checks on import that its extra is installed (imgsearch._extras).
"""

from imgsearch._extras import require_extra

require_extra("server", "grpc_health", "grpc_reflection", "prometheus_client")
