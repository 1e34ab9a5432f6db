"""Searcher benchmark: load rate, index build, recall and latency over the RPC, against raw SQL.

    python bench/searcher.py [--rows 100000] [--queries 200] [--out bench/results/searcher.json]

Runs `imgsearch-searcher` as its own process on a fresh embedded PostgreSQL (the deployment
shape: clients and server do not share a GIL), then, in the same run and on the same data:

- Upsert: 100k clustered 1000-d vectors streamed in 1000-item messages into the default-indexed
  collection (the HNSW build is deferred to the end of the stream, as for any bulk load);
  baseline: raw psycopg2 binary COPY of the same rows into a bare table, then the same
  CREATE INDEX statement timed on its own.
- Search: recall@10 against exact numpy search, p50/p99 latency at ef_search 40, 100, 200, 400,
  through the RPC and through the same SQL on a raw psycopg2 connection; exact numpy search
  latency for scale.
- QPS with 1 and 4 concurrent clients at the default ef_search, RPC and raw SQL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
from pgvector.psycopg2 import register_vector

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgsearch.v1 import searcher_pb2 as pb  # noqa: E402
from searcher.config import SearcherConfig  # noqa: E402
from searcher.embedded import EmbeddedPostgres  # noqa: E402
from searcher.store import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, encode_binary_copy  # noqa: E402
from searcher.store import Item as StoreItem  # noqa: E402
from tests.searcher_helpers import clustered_vectors, searcher_stub, vector  # noqa: E402

COLLECTION = "bench"
TOP_K = 10
EF_SEARCHES = (40, 100, 200, 400)
DEFAULT_EF_SEARCH = SearcherConfig().default_ef_search
MAINTENANCE_WORK_MEM = "1GB"


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
            [
                sys.executable,
                "-m",
                "searcher",
                "--address",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(data_dir),
                "--maintenance-work-mem",
                MAINTENANCE_WORK_MEM,
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )
        deadline = time.monotonic() + 120
        while "listening on port" not in log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"searcher did not start:\n{log_path.read_text()}")
            time.sleep(0.2)

    def index_build_seconds(self) -> float:
        found = re.findall(r"built HNSW index of \S+ in ([0-9.]+) s", self.log_path.read_text())
        return float(found[-1]) if found else float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def recall_at_k(found: list[list[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(
        np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)])
    )


def exact_truth(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact neighbours by numpy, and the mean seconds per single-query brute-force scan."""
    norms = np.einsum("ij,ij->i", data, data)
    truth = np.empty((len(queries), k), dtype=np.int64)
    started = time.perf_counter()
    for i, q in enumerate(queries):
        distances = norms - 2.0 * (data @ q)  # + |q|^2, constant per query
        candidates = np.argpartition(distances, k)[:k]
        truth[i] = candidates[np.argsort(distances[candidates], kind="stable")]
    return truth, (time.perf_counter() - started) / len(queries)


def timed_upsert(port: int, data: np.ndarray) -> tuple[float, pb.UpsertResponse]:
    def messages() -> Iterator[pb.UpsertRequest]:
        for start in range(0, len(data), 1000):
            stop = min(start + 1000, len(data))
            yield pb.UpsertRequest(
                collection=COLLECTION,
                items=[pb.Item(id=i, vector=vector(data[i])) for i in range(start, stop)],
            )

    channel, stub = searcher_stub(port)
    with channel:
        started = time.perf_counter()
        response = stub.Upsert(messages(), timeout=3600)
        return time.perf_counter() - started, response


def raw_load(dsn: str, data: np.ndarray) -> tuple[float, float]:
    """Binary COPY of the same rows into a bare table (1000-row transactions), then the same
    CREATE INDEX; returns (load seconds, index build seconds)."""
    conn = psycopg2.connect(dsn)
    register_vector(conn)
    dim = data.shape[1]
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_raw")
        cur.execute(
            f"CREATE TABLE bench_raw (id bigint PRIMARY KEY, label text NOT NULL DEFAULT '', "
            f"uri text NOT NULL DEFAULT '', attributes jsonb NOT NULL DEFAULT '{{}}', "
            f"embedding vector({dim}) NOT NULL)"
        )
        cur.execute("ALTER TABLE bench_raw ALTER COLUMN embedding SET STORAGE PLAIN")
    started = time.perf_counter()
    for start in range(0, len(data), 1000):
        items = [
            StoreItem(id=i, label="", uri="", attributes={}, vector=data[i])
            for i in range(start, min(start + 1000, len(data)))
        ]
        with conn, conn.cursor() as cur:
            cur.copy_expert(
                "COPY bench_raw (id, label, uri, attributes, embedding) FROM STDIN WITH BINARY",
                encode_binary_copy(items, dim),
            )
    load_s = time.perf_counter() - started
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        started = time.perf_counter()
        cur.execute(
            "CREATE INDEX ON bench_raw USING hnsw (embedding vector_l2_ops) "
            f"WITH (m = {DEFAULT_M}, ef_construction = {DEFAULT_EF_CONSTRUCTION})"
        )
        build_s = time.perf_counter() - started
        cur.execute("ANALYZE bench_raw")
    conn.close()
    return load_s, build_s


def rpc_searcher(port: int, ef_search: int) -> tuple[Callable[[np.ndarray], list[int]], Any]:
    channel, stub = searcher_stub(port)
    params = pb.SearchParams(ef_search=ef_search)

    def search(q: np.ndarray) -> list[int]:
        response = stub.Search(
            pb.SearchRequest(collection=COLLECTION, vector=vector(q), top_k=TOP_K, params=params),
            timeout=30,
        )
        return [hit.id for hit in response.hits]

    return search, channel


def sql_searcher(
    dsn: str, table: str, ef_search: int
) -> tuple[Callable[[np.ndarray], list[int]], Any]:
    """The searcher's own query (same columns, operator, ORDER BY, LIMIT, SET LOCAL) on a raw
    psycopg2 connection."""
    conn = psycopg2.connect(dsn)
    register_vector(conn)
    query = (
        f"SELECT id, label, uri, attributes, embedding <-> %s AS distance FROM {table} "
        "ORDER BY distance LIMIT %s"
    )

    def search(q: np.ndarray) -> list[int]:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL hnsw.ef_search = %s", (ef_search,))
            cur.execute(query, (q, TOP_K))
            return [row[0] for row in cur.fetchall()]

    return search, conn


def latency_run(
    search: Callable[[np.ndarray], list[int]], queries: np.ndarray
) -> tuple[list[list[int]], list[float]]:
    for q in queries:  # warm: the index pages into shared buffers, for every path alike
        search(q)
    found, seconds = [], []
    for q in queries:
        started = time.perf_counter()
        found.append(search(q))
        seconds.append(time.perf_counter() - started)
    return found, seconds


def qps_run(
    make: Callable[[], tuple[Callable[[np.ndarray], list[int]], Any]],
    queries: np.ndarray,
    clients: int,
    duration_s: float,
) -> float:
    searchers = [make() for _ in range(clients)]
    counts = [0] * clients
    stop = threading.Event()

    def client(i: int) -> None:
        search = searchers[i][0]
        j = i
        while not stop.is_set():
            search(queries[j % len(queries)])
            counts[i] += 1
            j += clients

    for search, _ in searchers:
        search(queries[0])
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for _, handle in searchers:
        handle.close()
    return sum(counts) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--qps-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "searcher.json")
    args = parser.parse_args()

    print(f"generating {args.rows} clustered 1000-d vectors and {args.queries} queries", flush=True)
    data = clustered_vectors(args.rows, seed=1)
    queries = clustered_vectors(args.queries, seed=2)
    truth, numpy_s = exact_truth(data, queries, TOP_K)
    results: dict[str, Any] = {
        "rows": args.rows,
        "queries": args.queries,
        "top_k": TOP_K,
        "cpus": os.cpu_count(),
        "numpy_exact_ms_per_query": numpy_s * 1000,
    }

    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp:
        server = SearcherProcess(Path(tmp) / "pgdata", Path(tmp) / "searcher.log")
        postgres = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = postgres.start()
        try:
            channel, stub = searcher_stub(server.port)
            with channel:
                stub.CreateCollection(
                    pb.CreateCollectionRequest(name=COLLECTION, dim=data.shape[1]), timeout=60
                )
            print("Upsert through the RPC …", flush=True)
            total_s, response = timed_upsert(server.port, data)
            build_s = server.index_build_seconds()
            assert response.inserted_count == args.rows, response
            results["rpc_upsert"] = {
                "total_s": total_s,
                "index_build_s": build_s,
                "load_rows_per_s": args.rows / (total_s - build_s),
            }
            print(f"  {results['rpc_upsert']}", flush=True)
            print("raw binary COPY + CREATE INDEX …", flush=True)
            load_s, raw_build_s = raw_load(dsn, data)
            results["raw_load"] = {
                "load_rows_per_s": args.rows / load_s,
                "index_build_s": raw_build_s,
            }
            print(f"  {results['raw_load']}", flush=True)

            table = f"imgsearch_data.{COLLECTION}"
            for ef in EF_SEARCHES:
                for name, make in (
                    ("rpc", lambda ef=ef: rpc_searcher(server.port, ef)),
                    ("raw_sql", lambda ef=ef: sql_searcher(dsn, table, ef)),
                ):
                    search, handle = make()
                    found, seconds = latency_run(search, queries)
                    handle.close()
                    row = {
                        "recall_at_10": recall_at_k(found, truth),
                        "p50_ms": percentile_ms(seconds, 50),
                        "p99_ms": percentile_ms(seconds, 99),
                    }
                    results[f"search_ef{ef}_{name}"] = row
                    print(f"  ef_search={ef} {name}: {row}", flush=True)

            for clients in (1, 4):
                for name, make in (
                    ("rpc", lambda: rpc_searcher(server.port, DEFAULT_EF_SEARCH)),
                    ("raw_sql", lambda: sql_searcher(dsn, table, DEFAULT_EF_SEARCH)),
                ):
                    qps = qps_run(make, queries, clients, args.qps_seconds)
                    results[f"qps_{clients}_clients_{name}"] = qps
                    print(f"  {clients} client(s) {name}: {qps:.0f} QPS", flush=True)
        finally:
            postgres.stop()
            server.stop()

    rpc_p50 = results[f"search_ef{DEFAULT_EF_SEARCH}_rpc"]["p50_ms"]
    sql_p50 = results[f"search_ef{DEFAULT_EF_SEARCH}_raw_sql"]["p50_ms"]
    results["ratios"] = {
        "rpc_p50_over_sql_p50": rpc_p50 / sql_p50,
        "rpc_qps4_over_sql_qps4": results["qps_4_clients_rpc"] / results["qps_4_clients_raw_sql"],
    }
    print(json.dumps(results["ratios"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
