"""What the benchmarks start and watch beside the code they measure: `imgsearch-searcher` as its
own process, the memory of a PostgreSQL server, the least an RPC to a server costs, and where
the results go."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SearcherProcess:
    """`imgsearch-searcher` on an embedded PostgreSQL in `data_dir`; its log goes to a file."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "searcher", "--address", f"127.0.0.1:{self.port}",
             "--data-dir", str(data_dir)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "listening on port" not in log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"searcher did not start:\n{log_path.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)
        self._log.close()


# Most of one core the memory sampler may take. A sample reads every PostgreSQL process's page
# tables (/proc/PID/smaps_rollup): at 1M rows, 13 processes holding 6.5 GB, 0.2 s of CPU. Taken
# every 0.5 s, as until stop 47, that was 40% of a core, taken from the builds and searches
# being measured on a 2-core machine.
SAMPLER_SHARE = 0.02


class PostgresMemory:
    """Samples the summed proportional set size of the PostgreSQL processes of a data
    directory, every `interval_s` or as seldom as keeps the sampling under SAMPLER_SHARE of a
    core; `peak_mb()` since the last `reset()`."""

    def __init__(self, data_dir: Path, interval_s: float = 0.5) -> None:
        self.data_dir = str(data_dir)
        self.interval_s = interval_s
        self._peak = 0
        self.samples = 0
        self.cpu_s = 0.0  # the sampling's own CPU time: what it took from the run measured
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            spent = self.cpu_s
            self._sample()
            wait = max(self.interval_s, (self.cpu_s - spent) / SAMPLER_SHARE)

    def _sample(self) -> None:
        started = time.thread_time()
        postmaster = _postmaster(self.data_dir)
        total = 0
        for process in [] if postmaster is None else [postmaster, *postmaster.children(True)]:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                pass
        with self._lock:
            self._peak = max(self._peak, total)
            self.samples += 1
            self.cpu_s += time.thread_time() - started

    def reset(self) -> None:
        with self._lock:
            self._peak = 0

    def peak_mb(self) -> float:
        """The peak, with a sample taken now (the last wait may have been seconds)."""
        self._sample()
        with self._lock:
            return self._peak / 1e6

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _postmaster(data_dir: str) -> psutil.Process | None:
    pid_file = Path(data_dir) / "postmaster.pid"
    try:
        return psutil.Process(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, psutil.Error):
        return None


def write_results(out: Path, results: dict[str, Any]) -> None:
    """The run's figures as JSON in `out` (bench/results/ by default)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def health_check_p50_ms(port: int, calls: int = 400) -> float:
    """p50 of the searcher's gRPC health check: a round trip through the same server with
    nothing behind it, the least any RPC costs."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        seconds = []
        for i in range(calls + 50):  # the first 50 warm the channel
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            if i >= 50:
                seconds.append(time.perf_counter() - started)
    return float(np.percentile(seconds, 50) * 1000)
