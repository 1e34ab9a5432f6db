"""Embedder benchmark: the service against the tutorial's in-process loop and the machine's ceiling.

    python bench/embedder.py [--images 500] [--out bench/results/embedder.json]

On one set of generated photo-like JPEGs (500×375), every part using all the machine's cores,
in one run:

(a) the tutorial's loop in this process: PIL decode → Compose preprocessing → eager NCHW
    SqueezeNet 1.1, batches of 100;
(b) the embedder service in its own process with default settings (runtime auto: ONNX Runtime
    when installed; random weights, seed 0: weights do not change the cost), with 1, 4, 16 and
    64 concurrent clients each sending one image per Embed request, and one client streaming one
    image per EmbedStream message, each for --seconds: images/s, p50/p99 latency, the server's
    mean batch size, and where the cores' time went (the server, the clients, idle);
(c) the ceiling: per-image core-seconds of decode + preprocess (one thread) and of the forward
    pass alone (the service's batch size), combined for the cores the better of two ways:
    cores / (decode_s + cores × forward_s) with one pass on every core's thread, or
    cores / (decode_s + forward_one_thread_s) with one single-threaded pass per core;
(d) the forward pass alone, torch (channels_last) and ONNX Runtime, at batch 1, 8, 16 and 32.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._processes import write_results  # noqa: E402
from embedder.batcher import BatcherConfig  # noqa: E402
from embedder.decode import decode_image  # noqa: E402
from embedder.model import EmbeddingModel, ModelSpec, reference_transform  # noqa: E402
from embedder.preprocessing import preprocess  # noqa: E402
from imgsearch.v1 import embedder_pb2 as pb  # noqa: E402
from tests.embedder_helpers import embedder_stub  # noqa: E402
from tests.images import jpeg  # noqa: E402

CLIENTS = (1, 4, 16, 64)


def tutorial_loop(data: list[bytes], batch: int = 100) -> float:
    """(a): images/s of the tutorial's decode → preprocess → forward loop."""
    torch.manual_seed(0)
    model = torchvision.models.get_model("squeezenet1_1", weights=None).eval()
    transform = reference_transform()
    with torch.no_grad():
        warm = [transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in data[:batch]]
        model(torch.stack(warm))  # first-call kernel setup for this batch shape
        started = time.perf_counter()
        for i in range(0, len(data), batch):
            tensors = [
                transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in data[i : i + batch]
            ]
            model(torch.stack(tensors))
    return len(data) / (time.perf_counter() - started)


def ceiling(data: list[bytes], batch: int, cores: int, seconds: float = 4.0) -> dict[str, Any]:
    """(c): per-image decode+preprocess core-seconds, and forward wall-seconds with the model on
    every core's thread and on one thread, each timed for several seconds (a second of forward
    passes swung this figure by ±30%). The ceiling is the better of the two ways to use the
    cores: one pass at a time on all of them, or one single-threaded pass per core."""
    decoded, started = 0, time.perf_counter()
    tensors = []
    while time.perf_counter() - started < seconds:
        tensors.append(preprocess(decode_image(data[decoded % len(data)])))
        decoded += 1
    decode_s = (time.perf_counter() - started) / decoded
    x = np.stack(tensors[:batch])
    forward_s = {}
    for threads in (cores, 1):
        model = EmbeddingModel(ModelSpec(weights="random", device="cpu", threads=threads))
        model.warm_up(batch)
        model.forward(x)
        forwarded, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.forward(x)
            forwarded += batch
        forward_s[threads] = (time.perf_counter() - started) / forwarded
    all_cores = cores / (decode_s + cores * forward_s[cores])
    per_core = cores / (decode_s + forward_s[1])
    return {
        "runtime": model.info.runtime,
        "decode_preprocess_ms_per_image": decode_s * 1000,
        "forward_ms_per_image": forward_s[cores] * 1000,
        "forward_one_thread_ms_per_image": forward_s[1] * 1000,
        "cores": cores,
        "ceiling_all_cores_per_pass_images_per_s": all_cores,
        "ceiling_one_pass_per_core_images_per_s": per_core,
        "ceiling_images_per_s": max(all_cores, per_core),
    }


def forward_sweep(cores: int, seconds: float = 2.0) -> dict[str, dict[str, float]]:
    """(d): the forward pass alone, img/s, per runtime and batch size, on random input: what the
    runtime default and the CPU batch-size default are chosen from."""
    sweep: dict[str, dict[str, float]] = {}
    for runtime in ("torch", "onnx"):
        model = EmbeddingModel(
            ModelSpec(weights="random", device="cpu", runtime=runtime, threads=cores)
        )
        sweep[runtime] = {}
        for batch in (1, 8, 16, 32):
            x = np.random.default_rng(0).random((batch, 3, 224, 224), np.float32)
            model.forward(x)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model.forward(x)
                done += batch
            sweep[runtime][str(batch)] = done / (time.perf_counter() - started)
    return sweep


class Server:
    def __init__(self, extra_args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_embedder_server.py"), "--address",
             "127.0.0.1:0", "--weights", "random", "--device", "cpu", *extra_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.process.stdout is not None
        hello = json.loads(self.process.stdout.readline())
        self.port: int = hello["port"]

    def stats(self, command: str = "stats") -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self.process.stdout.readline())
        return result

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


class CoreTime:
    """Where the cores' time went between two snapshots: this process (the clients), the server
    process, everything else, and idle. What the ceiling leaves out is in these figures."""

    def __init__(self, server_pid: int) -> None:
        self.clients = psutil.Process()
        self.server = psutil.Process(server_pid)
        self._start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float, float, float]:
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        total = sum(machine)
        mine, theirs = self.clients.cpu_times(), self.server.cpu_times()
        return (
            time.perf_counter(),
            mine.user + mine.system,
            theirs.user + theirs.system,
            total - idle,
            idle,
        )

    def per_image(self, images: int) -> dict[str, float]:
        """Core-milliseconds per image since construction, by who used them."""
        now = self._snapshot()
        wall, clients, server, busy, idle = (b - a for a, b in zip(self._start, now, strict=True))
        ms = 1000 / images
        return {
            "wall_s": wall,
            "client_core_ms_per_image": clients * ms,
            "server_core_ms_per_image": server * ms,
            "other_core_ms_per_image": max(0.0, busy - clients - server) * ms,
            "idle_core_ms_per_image": idle * ms,
        }


def clients_run(
    server: Server, data: list[bytes], clients: int, seconds: float
) -> tuple[float, list[float], dict[str, float]]:
    """`clients` threads, each its own channel, connected before the clock starts, each sending
    one image per Embed request (cycling through `data`) for `seconds`. Runs of a fixed 500
    images lasted ~2 s and moved ±8% between repeats, channel set-up included. Also where the
    cores' time went meanwhile (CoreTime)."""
    latencies: list[float] = []
    lock = threading.Lock()
    next_image = itertools.count()
    ready = threading.Barrier(clients + 1)
    stop_at = [float("inf")]

    def client() -> None:
        channel, stub = embedder_stub(server.port)
        with channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            ready.wait()
            while time.perf_counter() < stop_at[0]:
                with lock:
                    i = next(next_image) % len(data)
                request = pb.EmbedRequest(images=[pb.Image(key=str(i), data=data[i])])
                started = time.perf_counter()
                response = stub.Embed(request, timeout=120)
                elapsed = time.perf_counter() - started
                assert response.results[0].WhichOneof("outcome") == "vector"
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    core_time = CoreTime(server.process.pid)
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for t in threads:
        t.join()
    rate = len(latencies) / (time.perf_counter() - started)
    return rate, latencies, core_time.per_image(len(latencies))


def stream_run(server: Server, data: list[bytes], seconds: float) -> dict[str, float]:
    """One EmbedStream, one image a message, for `seconds` (cycling through `data`)."""
    sent = [0]

    def requests() -> Iterator[pb.EmbedStreamRequest]:
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            i = sent[0] % len(data)
            sent[0] += 1
            yield pb.EmbedStreamRequest(images=[pb.Image(key=str(i), data=data[i])])

    channel, stub = embedder_stub(server.port)
    with channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        core_time = CoreTime(server.process.pid)
        started = time.perf_counter()
        count = sum(1 for _ in stub.EmbedStream(requests(), timeout=600))
        assert count == sent[0]
        rate = count / (time.perf_counter() - started)
        return {"images_per_s": rate, **core_time.per_image(count)}


def service_runs(
    server: Server,
    data: list[bytes],
    args: argparse.Namespace,
    results: dict[str, Any],
    measure_ceiling: Callable[[], dict[str, Any]],
) -> None:
    """(b) into `results`: each client count for --seconds, then one EmbedStream; the ceiling
    is timed again right before and right after the 16 clients."""
    clients_run(server, data[:32], 4, seconds=1.0)  # warm up
    for clients in map(int, args.clients.split(",")):
        before = measure_ceiling() if clients == 16 else None
        server.stats("reset")
        rate, latencies, core_time = clients_run(server, data, clients, args.seconds)
        stats = server.stats()
        row = {
            "images_per_s": rate,
            "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "p99_ms": float(np.percentile(latencies, 99) * 1000),
            "mean_batch_size": stats["mean_batch_size"],
            # wall time inside the server's decode and forward calls, per image: above the
            # ceiling's figures when they contend for the cores
            **{
                f"service_{part}_ms_per_image": stats[f"{part}_seconds"] * 1000 / stats["images"]
                for part in ("decode", "preprocess", "forward")
            },
            **core_time,
        }
        results[f"b_{clients}_clients"] = row
        print(f"(b) {clients} clients: {_rounded(row)}", flush=True)
        if before is not None:
            after = measure_ceiling()
            results["c_ceiling_beside_16_clients"] = {
                "before": before,
                "after": after,
                "cores": after["cores"],
                "ceiling_images_per_s": (
                    before["ceiling_images_per_s"] + after["ceiling_images_per_s"]
                )
                / 2,
            }
            print(
                f"(c) ceiling before / after 16 clients: {before['ceiling_images_per_s']:.1f}"
                f" / {after['ceiling_images_per_s']:.1f}",
                flush=True,
            )
    server.stats("reset")
    results["b_stream"] = stream_run(server, data, args.seconds)
    results["b_stream"]["mean_batch_size"] = server.stats()["mean_batch_size"]
    print(f"(b) EmbedStream: {_rounded(results['b_stream'])}", flush=True)


def core_time_account(ceiling: dict[str, Any], row: dict[str, Any]) -> dict[str, float]:
    """The gap between a run and the ceiling, in core-milliseconds per image: the ceiling counts
    decode + forward alone; the run also spends the server's other work (gRPC, protobuf, the
    batcher, threads waiting on each other), the clients' and other processes' time, and idle."""
    ceiling_ms = ceiling["cores"] * 1000 / ceiling["ceiling_images_per_s"]
    spent = sum(v for k, v in row.items() if k.endswith("_core_ms_per_image"))
    return {
        "ceiling_core_ms_per_image": ceiling_ms,
        "run_core_ms_per_image": spent,
        "server_beyond_ceiling_ms": row["server_core_ms_per_image"] - ceiling_ms,
        "client_ms": row["client_core_ms_per_image"],
        "other_processes_ms": row["other_core_ms_per_image"],
        "idle_ms": row["idle_core_ms_per_image"],
    }


def _rounded(row: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in row.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="distinct JPEGs, cycled")
    parser.add_argument("--seconds", type=float, default=8.0, help="per client count")
    parser.add_argument("--server-args", default="", help="extra imgsearch-embedder flags")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embedder.json")
    args = parser.parse_args()
    print(f"generating {args.images} JPEGs of 500×375", flush=True)
    data = [jpeg(i, (500, 375)) for i in range(args.images)]
    batch = BatcherConfig().max_batch_size
    results: dict[str, Any] = {
        "images": len(data),
        "mean_jpeg_bytes": float(np.mean([len(d) for d in data])),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "service_max_batch_size": batch,
    }
    results["a_tutorial_loop_images_per_s"] = tutorial_loop(data)
    print(f"(a) tutorial loop: {results['a_tutorial_loop_images_per_s']:.1f} img/s", flush=True)
    cores = results["torch_threads"]
    results["c_ceiling"] = ceiling(data, batch, cores)
    print(f"(c) ceiling: {results['c_ceiling']}", flush=True)
    results["d_forward_images_per_s"] = forward_sweep(cores)
    print(
        f"(d) forward alone by runtime and batch: {results['d_forward_images_per_s']}", flush=True
    )

    server = Server(args.server_args.split())
    try:
        service_runs(server, data, args, results, lambda: ceiling(data, batch, cores))
    finally:
        server.stop()

    if "b_16_clients" in results:
        b16 = results["b_16_clients"]["images_per_s"]
        beside = results["c_ceiling_beside_16_clients"]
        results["ratios"] = {
            "b16_over_a": b16 / results["a_tutorial_loop_images_per_s"],
            # The ceilings timed just before and after the 16 clients: the host's speed drifts
            # (the ceiling at the start differed by up to 30% between runs minutes apart).
            "b16_over_c": b16 / beside["ceiling_images_per_s"],
            "b16_over_c_at_start": b16 / results["c_ceiling"]["ceiling_images_per_s"],
        }
        results["b16_core_time"] = core_time_account(beside, results["b_16_clients"])
        print(json.dumps(results["b16_core_time"], indent=2))
        print(json.dumps(results["ratios"], indent=2))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
