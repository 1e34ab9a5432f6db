"""`imgsearch-health HOST:PORT [SERVICE]`: exit 0 when the server's gRPC health service says
SERVING, 1 otherwise. For container health checks and orchestrator probes; TLS settings come
from the same IMGSEARCH_TLS* variables as the client's (health needs no token)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgsearch._channel import ChannelSecurity, open_channel


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgsearch-health", description=__doc__)
    parser.add_argument("address", help="host:port of an imgsearch server")
    parser.add_argument("service", nargs="?", default="", help="service name (default: server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    args = parser.parse_args(argv)
    security = ChannelSecurity.from_env()
    security = ChannelSecurity(
        security.tls, security.ca_file, security.cert_file, security.key_file
    )
    try:
        with open_channel(args.address, [], security) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
