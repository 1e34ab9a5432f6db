"""Soak: mixed Embed + Search + Upsert traffic from 16 concurrent clients against the two
services, for ten minutes or more. Not in CI.

    python bench/soak.py [--minutes 10] [--warm-up-s 60] [--clients 16] [--out FILE]

The embedder (random weights: the same cost as trained ones) and the searcher (embedded
PostgreSQL in a temporary directory) run as their own processes, so each one's RSS is its own.
Each client loops over: Search by vector (50%), Embed of 1-4 JPEGs (30%), Upsert of one 16-item
message (20%; new ids and updates). Reported: p50/p99 per RPC, errors by status (any is
unexpected), and each service's RSS over time; "flat" means the mean RSS of the last minute
is within 10% of the mean of the first minute after warm-up.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from imgsearch import vectors  # noqa: E402
from imgsearch.v1 import embedder_pb2 as epb  # noqa: E402
from imgsearch.v1 import embedder_pb2_grpc, searcher_pb2_grpc  # noqa: E402
from imgsearch.v1 import searcher_pb2 as spb  # noqa: E402
from tests.images import jpeg  # noqa: E402
from tests.process_helpers import end_process, start_service  # noqa: E402
from tests.searcher_helpers import clustered_vectors, upsert_messages  # noqa: E402

DIM = 1000
SEED_ROWS = 20_000


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)

    def add(self, rpc: str, seconds: float, code: grpc.StatusCode | None) -> None:
        with self.lock:
            if code is None:
                self.latencies[rpc].append(seconds)
            else:
                self.errors[f"{rpc} {code.name}"] += 1


def client_loop(
    index: int,
    embedder_port: int,
    searcher_port: int,
    queries: np.ndarray,
    photos: list[bytes],
    stop_at: float,
    recorder: Recorder,
) -> None:
    rng = random.Random(index)
    first_id = next_id = 10_000_000 * (index + 1)
    upserts = 0
    with (
        grpc.insecure_channel(f"127.0.0.1:{embedder_port}") as echannel,
        grpc.insecure_channel(f"127.0.0.1:{searcher_port}") as schannel,
    ):
        embedder = embedder_pb2_grpc.EmbedderServiceStub(echannel)
        searcher = searcher_pb2_grpc.SearcherServiceStub(schannel)
        while time.monotonic() < stop_at:
            draw = rng.random()
            started = time.perf_counter()
            code = None
            try:
                if draw < 0.5:
                    rpc = "Search"
                    query = queries[rng.randrange(len(queries))]
                    request = spb.SearchRequest(
                        collection="soak", vector=vectors.to_proto(query), top_k=10
                    )
                    searcher.Search(request, timeout=30)
                elif draw < 0.8:
                    rpc = "Embed"
                    chosen = rng.sample(photos, rng.randint(1, 4))
                    request = epb.EmbedRequest(
                        images=[epb.Image(key=str(i), data=d) for i, d in enumerate(chosen)]
                    )
                    results = embedder.Embed(request, timeout=30).results
                    assert all(r.WhichOneof("outcome") == "vector" for r in results)
                else:
                    rpc = "Upsert"
                    # Alternately new ids and an update of 16 ids this client wrote before.
                    upserts += 1
                    if upserts % 2 or next_id - first_id < 16:
                        ids = list(range(next_id, next_id + 16))
                        next_id += 16
                    else:
                        start = rng.randrange(first_id, next_id - 15)
                        ids = list(range(start, start + 16))
                    items = [
                        spb.Item(id=i, vector=vectors.to_proto(queries[i % len(queries)]))
                        for i in ids
                    ]
                    searcher.Upsert(
                        iter([spb.UpsertRequest(collection="soak", items=items)]), timeout=30
                    )
            except grpc.RpcError as exc:
                code = exc.code()
            recorder.add(rpc, time.perf_counter() - started, code)


def rss_mb(process: subprocess.Popen[str]) -> float:
    return float(psutil.Process(process.pid).memory_info().rss) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warm-up-s", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        searcher, searcher_port = start_service("searcher", "--data-dir", str(Path(tmp) / "pg"))
        embedder, embedder_port = start_service("embedder", "--weights", "random")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{searcher_port}") as channel:
                stub = searcher_pb2_grpc.SearcherServiceStub(channel)
                stub.CreateCollection(spb.CreateCollectionRequest(name="soak", dim=DIM), timeout=30)
                data = clustered_vectors(SEED_ROWS, DIM, seed=0)
                stub.Upsert(upsert_messages("soak", data, per_message=500), timeout=600)
            queries = clustered_vectors(2000, DIM, seed=1)
            photos = [jpeg(i, (500, 375)) for i in range(64)]
            recorder = Recorder()
            began = time.monotonic()
            stop_at = began + args.warm_up_s + args.minutes * 60
            clients = [
                threading.Thread(
                    target=client_loop,
                    args=(i, embedder_port, searcher_port, queries, photos, stop_at, recorder),
                )
                for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            samples: list[dict[str, float]] = []
            warm_counts: dict[str, int] = {}
            while time.monotonic() < stop_at:
                time.sleep(5)
                elapsed = time.monotonic() - began
                samples.append(
                    {"t": elapsed, "embedder_mb": rss_mb(embedder), "searcher_mb": rss_mb(searcher)}
                )
                if not warm_counts and elapsed >= args.warm_up_s:
                    with recorder.lock:  # latencies from here on only
                        warm_counts = {rpc: len(v) for rpc, v in recorder.latencies.items()}
                print(
                    f"{elapsed:6.0f} s  embedder {samples[-1]['embedder_mb']:.0f} MB  searcher "
                    f"{samples[-1]['searcher_mb']:.0f} MB  errors {sum(recorder.errors.values())}",
                    flush=True,
                )
            for client in clients:
                client.join()
        finally:
            for process in (embedder, searcher):
                process.terminate()  # a graceful stop: the searcher releases its database
                process.wait(timeout=60)
                end_process(process)

    result: dict[str, Any] = {
        "minutes_after_warm_up": args.minutes,
        "warm_up_s": args.warm_up_s,
        "clients": args.clients,
        "weights": "random",
        "errors": dict(recorder.errors),
        "rpcs": {},
        "rss": {},
    }
    measured = args.minutes * 60
    for rpc, values in sorted(recorder.latencies.items()):
        steady = sorted(values[warm_counts.get(rpc, 0) :])
        result["rpcs"][rpc] = {
            "count": len(steady),
            "per_s": len(steady) / measured,
            "p50_ms": 1000 * steady[len(steady) // 2],
            "p99_ms": 1000 * steady[int(len(steady) * 0.99)],
        }
    after = [s for s in samples if s["t"] >= args.warm_up_s]
    for service in ("embedder", "searcher"):
        first = statistics.mean(s[f"{service}_mb"] for s in after if s["t"] < args.warm_up_s + 60)
        last = statistics.mean(s[f"{service}_mb"] for s in after if s["t"] > after[-1]["t"] - 60)
        result["rss"][service] = {
            "first_minute_mb": first,
            "last_minute_mb": last,
            "growth": last / first - 1,
            "flat_within_10pct": abs(last / first - 1) <= 0.10,
            "max_mb": max(s[f"{service}_mb"] for s in after),
        }
    result["samples"] = samples
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    ok = not recorder.errors and all(r["flat_within_10pct"] for r in result["rss"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
