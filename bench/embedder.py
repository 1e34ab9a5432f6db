"""Embedder benchmark: the service against the tutorial's in-process loop and the machine's ceiling.

    python bench/embedder.py [--images 500] [--out bench/results/embedder.json]

On one set of generated photo-like JPEGs (500×375), every part using all the machine's cores,
in one run:

(a) the tutorial's loop in this process: PIL decode → Compose preprocessing → eager NCHW
    SqueezeNet 1.1, batches of 100;
(b) the embedder service in its own process with default settings (runtime auto: ONNX Runtime
    when installed; random weights, seed 0: weights do not change the cost), with 1, 4, 16 and
    64 concurrent clients each sending one image per Embed request, and one client streaming one
    image per EmbedStream message: images/s, p50/p99 latency, the server's mean batch size;
(c) the ceiling: per-image core-seconds of decode + preprocess (one thread) and of the forward
    pass alone (the service's model at its batch size, all threads), combined for the cores:
    ceiling = cores / (decode_s + cores × forward_s);
(d) the forward pass alone, torch (channels_last) and ONNX Runtime, at batch 1, 8, 16 and 32.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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
    """(c): per-image decode+preprocess core-seconds and forward wall-seconds, each timed for
    several seconds (a second of forward passes swung this figure by ±30%)."""
    decoded, started = 0, time.perf_counter()
    tensors = []
    while time.perf_counter() - started < seconds:
        tensors.append(preprocess(decode_image(data[decoded % len(data)])))
        decoded += 1
    decode_s = (time.perf_counter() - started) / decoded
    model = EmbeddingModel(ModelSpec(weights="random", device="cpu"))
    model.warm_up(batch)
    x = np.stack(tensors[:batch])
    model.forward(x)
    forwarded, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.forward(x)
        forwarded += batch
    forward_s = (time.perf_counter() - started) / forwarded
    return {
        "runtime": model.info.runtime,
        "decode_preprocess_ms_per_image": decode_s * 1000,
        "forward_ms_per_image": forward_s * 1000,
        "cores": cores,
        "ceiling_images_per_s": cores / (decode_s + cores * forward_s),
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


def clients_run(port: int, data: list[bytes], clients: int) -> tuple[float, list[float]]:
    """`clients` threads, each its own channel, each sending one image per Embed request, until
    every image has been sent once."""
    latencies: list[float] = []
    lock = threading.Lock()
    next_image = iter(range(len(data)))

    def client() -> None:
        channel, stub = embedder_stub(port)
        with channel:
            while True:
                with lock:
                    i = next(next_image, None)
                if i is None:
                    return
                request = pb.EmbedRequest(images=[pb.Image(key=str(i), data=data[i])])
                started = time.perf_counter()
                response = stub.Embed(request, timeout=120)
                elapsed = time.perf_counter() - started
                assert response.results[0].WhichOneof("outcome") == "vector"
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(data) / (time.perf_counter() - started), latencies


def stream_run(port: int, data: list[bytes]) -> float:
    def requests() -> Iterator[pb.EmbedStreamRequest]:
        for i, d in enumerate(data):
            yield pb.EmbedStreamRequest(images=[pb.Image(key=str(i), data=d)])

    channel, stub = embedder_stub(port)
    with channel:
        started = time.perf_counter()
        count = sum(1 for _ in stub.EmbedStream(requests(), timeout=600))
        assert count == len(data)
        return len(data) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
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
    results["c_ceiling"] = ceiling(data, batch, results["torch_threads"])
    print(f"(c) ceiling: {results['c_ceiling']}", flush=True)
    results["d_forward_images_per_s"] = forward_sweep(results["torch_threads"])
    print(
        f"(d) forward alone by runtime and batch: {results['d_forward_images_per_s']}", flush=True
    )

    server = Server(args.server_args.split())
    try:
        clients_run(server.port, data[:32], 4)  # warm up
        for clients in map(int, args.clients.split(",")):
            server.stats("reset")
            rate, latencies = clients_run(server.port, data, clients)
            stats = server.stats()
            row = {
                "images_per_s": rate,
                "p50_ms": float(np.percentile(latencies, 50) * 1000),
                "p99_ms": float(np.percentile(latencies, 99) * 1000),
                "mean_batch_size": stats["mean_batch_size"],
            }
            results[f"b_{clients}_clients"] = row
            print(f"(b) {clients} clients: {row}", flush=True)
        server.stats("reset")
        rate = stream_run(server.port, data)
        results["b_stream"] = {
            "images_per_s": rate,
            "mean_batch_size": server.stats()["mean_batch_size"],
        }
        print(f"(b) EmbedStream: {results['b_stream']}", flush=True)
    finally:
        server.stop()

    b16 = results["b_16_clients"]["images_per_s"]
    results["ratios"] = {
        "b16_over_a": b16 / results["a_tutorial_loop_images_per_s"],
        "b16_over_c": b16 / results["c_ceiling"]["ceiling_images_per_s"],
    }
    print(json.dumps(results["ratios"], indent=2))
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
