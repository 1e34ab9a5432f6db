"""What one gRPC round trip costs on this machine with nothing behind it: the floor under the
Search RPC's cost over its raw SQL, and under the embedder's cost per image beyond decoding and
the model (issue 23).

    python bench/grpc_floor.py [--calls 2000] [--rounds 3] [--seconds 4] [--out FILE.json]

Health checks (an empty request, an empty answer) from one client thread in this process,
against servers each in its own process:
- `bare-sync`: grpcio's own health servicer on a bare `grpc.server` (a thread pool), over
  loopback TCP, and the same server over a Unix socket (`bare-sync-unix`);
- `bare-aio`: the same servicer on a bare `grpc.aio` server;
- `searcher`: `imgsearch-searcher` on an embedded PostgreSQL, with its guard interceptor,
  reflection and metrics.
Per server: the round trip's p50 and p99, and the client's and the server's CPU time per call
(`psutil`), the servers taking turns for --rounds rounds of --calls calls; each keeps its best
round's p50. Then 16 client threads on one channel for --seconds against `bare-sync`: calls/s
and CPU per call, what bench/embedder.py's 16 clients pay per image before any image is read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._processes import SearcherProcess, free_port, write_results  # noqa: E402

CHECK = health_pb2.HealthCheckRequest()
WARM_CALLS = 200


def serve_bare(kind: str, addresses: list[str]) -> None:
    """Run grpcio's health servicer on a bare server of `kind` until killed (the child's part)."""
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
        health_pb2_grpc.add_HealthServicer_to_server(
            health.HealthServicer(experimental_non_blocking=True), server
        )
        for address in addresses:
            server.add_insecure_port(address)
        server.start()
        print("serving", flush=True)
        server.wait_for_termination()
        return

    async def serve() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        for address in addresses:
            server.add_insecure_port(address)
        await server.start()
        print("serving", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


class BareServer:
    """A bare health server of `kind` in its own process, listening on `addresses`."""

    def __init__(self, kind: str, addresses: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, *addresses], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"serving":
            raise RuntimeError(f"the bare {kind} server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def one_round(target: str, server_pid: int, calls: int) -> dict[str, float]:
    """`calls` health checks one after another: p50, p99, and CPU ms per call on each side."""
    server = psutil.Process(server_pid)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(WARM_CALLS):
            stub.Check(CHECK, timeout=30)
        client_cpu, server_cpu = time.process_time(), _cpu(server)
        seconds = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.Check(CHECK, timeout=30)
            seconds.append(time.perf_counter() - started)
        client_cpu, server_cpu = time.process_time() - client_cpu, _cpu(server) - server_cpu
    return {
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "p99_ms": float(np.percentile(seconds, 99) * 1000),
        "client_cpu_ms_per_call": client_cpu / calls * 1000,
        "server_cpu_ms_per_call": server_cpu / calls * 1000,
    }


def concurrent_calls(
    target: str, server_pid: int, clients: int, seconds: float
) -> dict[str, float]:
    """`clients` threads calling as fast as answers come for `seconds`: calls/s, CPU per call."""
    server = psutil.Process(server_pid)
    counts = [0] * clients
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(WARM_CALLS):
            stub.Check(CHECK, timeout=30)
        deadline = time.monotonic() + seconds

        def run(i: int) -> None:
            while time.monotonic() < deadline:
                stub.Check(CHECK, timeout=30)
                counts[i] += 1

        client_cpu, server_cpu = time.process_time(), _cpu(server)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client_cpu, server_cpu = time.process_time() - client_cpu, _cpu(server) - server_cpu
    calls = sum(counts)
    return {
        "calls_per_s": calls / seconds,
        "client_cpu_ms_per_call": client_cpu / calls * 1000,
        "server_cpu_ms_per_call": server_cpu / calls * 1000,
    }


def _cpu(process: psutil.Process) -> float:
    """User and system CPU seconds of a process and its threads."""
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpc_floor.json")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.serve:
        serve_bare(args.serve[0], args.serve[1:])
        return 0
    rounds: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="imgsearch-grpc-floor-") as tmp:
        sync_port, aio_port, socket = free_port(), free_port(), f"unix://{tmp}/bare.sock"
        bare_sync = BareServer("sync", [f"127.0.0.1:{sync_port}", socket])
        bare_aio = BareServer("aio", [f"127.0.0.1:{aio_port}"])
        searcher = SearcherProcess(Path(tmp) / "pg", Path(tmp) / "searcher.log")
        targets = {
            "bare-sync": (f"127.0.0.1:{sync_port}", bare_sync.process.pid),
            "bare-sync-unix": (socket, bare_sync.process.pid),
            "bare-aio": (f"127.0.0.1:{aio_port}", bare_aio.process.pid),
            "searcher": (f"127.0.0.1:{searcher.port}", searcher.process.pid),
        }
        try:
            for _ in range(args.rounds):
                for name, (target, pid) in targets.items():
                    rounds.setdefault(name, []).append(one_round(target, pid, args.calls))
            sixteen = concurrent_calls(*targets["bare-sync"], 16, args.seconds)
        finally:
            searcher.stop()
            bare_aio.stop()
            bare_sync.stop()
    results: dict[str, Any] = {"calls": args.calls, "rounds": args.rounds, "servers": {}}
    for name, measured in rounds.items():
        best = min(measured, key=lambda r: r["p50_ms"])
        results["servers"][name] = {
            **best,
            "p50_ms_of_each_round": [r["p50_ms"] for r in measured],
            "median_round_p50_ms": statistics.median(r["p50_ms"] for r in measured),
        }
        print(f"{name:15s} p50 {best['p50_ms']:.3f} ms  p99 {best['p99_ms']:.3f} ms  CPU per "
              f"call: client {best['client_cpu_ms_per_call']:.3f} ms, server "
              f"{best['server_cpu_ms_per_call']:.3f} ms", flush=True)  # fmt: skip
    results["bare_sync_16_clients"] = sixteen
    print(f"16 clients on bare-sync: {sixteen['calls_per_s']:.0f} calls/s, CPU per call: client "
          f"{sixteen['client_cpu_ms_per_call']:.3f} ms, server "
          f"{sixteen['server_cpu_ms_per_call']:.3f} ms")  # fmt: skip
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
