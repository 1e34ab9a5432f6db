"""One HNSW graph over a collection against one graph per coarse cell: build time, recall, p50.

    python bench/partitions.py [--rows 200000] [--partitions 4,16] [--probes 1,2,3,4]
                               [--queries 300] [--no-one-graph] [--build-connections N]

Issue 22 asks for a million rows searchable at held-out recall@10 >= 0.98 within 15 minutes.
One graph over a million clustered rows took 1209 s to build and reached 0.909 at the default
effort (bench/RESULTS.md). This measures the layout a fix could take, before the searcher is
changed: the same rows in a table LIST-partitioned by coarse cell (searcher.cells: spherical
k-means, fitted on a sample), an HNSW index per partition, and a search that walks only the
partitions of its query's nearest cells (PostgreSQL prunes the others at plan time and merges
the walks in distance order). Against it, in the same run and embedded PostgreSQL: one table,
one graph. Both index `embedding::halfvec(1000)` with m=16, ef_construction=200, as the
searcher's default kind does.

Rows and queries: the searcher benchmark's clustered mixture (bench.datasets; queries drawn
from the mixture, never stored). Recall@10 is judged by distance against numpy's exact answer.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._processes import write_results  # noqa: E402
from bench.searcher import exact_truth  # noqa: E402
from searcher.catalogue import Metric  # noqa: E402
from searcher.cells import Cells, fit  # noqa: E402
from searcher.embedded import EmbeddedPostgres  # noqa: E402
from searcher.pgvector_io import vector_literal  # noqa: E402
from searcher.recall import recall_by_distance  # noqa: E402

DIM = 1000
K = 10
EF_SEARCH = (40, 100, 200, 400)
SAMPLE_ROWS = 16_384  # what the searcher fits its cells on
HALF = f"halfvec({DIM})"
INDEX = f"USING hnsw ((embedding::{HALF}) halfvec_l2_ops) WITH (m = 16, ef_construction = 200)"

Search = Callable[[np.ndarray], list[int]]


def copy_rows(cur: Any, table: str, vectors: np.ndarray, cells: np.ndarray | None) -> None:
    """Binary COPY of (id, [cell,] embedding) rows, ids 0..n-1."""
    fields = 2 if cells is None else 3
    vector_header = struct.pack("!ihh", 4 + 4 * DIM, DIM, 0)
    columns = "(id, embedding)" if cells is None else "(id, cell, embedding)"
    for start in range(0, len(vectors), 20_000):
        out = io.BytesIO()
        out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
        for i in range(start, min(start + 20_000, len(vectors))):
            out.write(struct.pack("!hiq", fields, 8, i))
            if cells is not None:
                out.write(struct.pack("!ii", 4, int(cells[i])))
            out.write(vector_header + vectors[i].astype(">f4").tobytes())
        out.write(struct.pack("!h", -1))
        out.seek(0)
        cur.copy_expert(f"COPY {table} {columns} FROM STDIN (FORMAT binary)", out)
    cur.execute(f"ANALYZE {table}")  # a partition without statistics is planned as a seq scan


def timed_build(conn: Any, table: str, build: Callable[[], list[str]] | None = None) -> dict:
    """CREATE INDEX on `table` (on a partitioned table: one per partition, one after another),
    or `build` (which returns its notices) instead; its seconds, size and spill notices."""
    del conn.notices[:]
    with conn.cursor() as cur:
        started = time.perf_counter()
        if build is None:
            cur.execute(f"CREATE INDEX ON {table} {INDEX}")
            notices = list(conn.notices)
        else:
            notices = build()
        seconds = time.perf_counter() - started
        cur.execute(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index "
            "WHERE indrelid IN (SELECT relid FROM pg_partition_tree(%s::regclass) "
            "UNION SELECT %s::regclass)",
            (table, table),
        )
        size = int(cur.fetchone()[0])
    spilled = [n.strip() for n in notices if "no longer fits" in n]
    return {"build_s": seconds, "index_mb": size / 2**20, "spill_notices": spilled}


def builds_side_by_side(dsn: str, tables: list[str], connections: int) -> Callable[[], list]:
    """A build of each table's index, `connections` at a time (each its own backend, without
    parallel workers: a core each)."""

    def build_one(table: str) -> list[str]:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SET max_parallel_maintenance_workers = 0")
                cur.execute(f"CREATE INDEX ON {table} {INDEX}")
            return list(conn.notices)
        finally:
            conn.close()

    def build() -> list[str]:
        with concurrent.futures.ThreadPoolExecutor(connections) as pool:
            return [n for notices in pool.map(build_one, tables) for n in notices]

    return build


def searcher_of(conn: Any, table: str, cells: Cells | None) -> Search:
    """Top-10 ids for a query: a walk of the whole graph, or of its nearest cells' graphs."""
    where = "" if cells is None else "WHERE cell = ANY(%(cells)s)"
    statement = (
        f"SELECT id FROM {table} {where} ORDER BY embedding::{HALF} <-> %(q)s::{HALF} LIMIT {K}"
    )

    def search(query: np.ndarray) -> list[int]:
        params: dict[str, Any] = {"q": vector_literal(query)}
        if cells is not None:
            params["cells"] = cells.nearest(query)
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return [row[0] for row in cur.fetchall()]

    return search


def measured(
    search: Search, data: np.ndarray, queries: np.ndarray, true_d: np.ndarray
) -> dict[str, float]:
    """recall@10 (by distance) and latency of `search` over the queries (3 warm-ups first)."""
    for query in queries[:3]:
        search(query)
    recalls, seconds = [], []
    for query, truth in zip(queries, true_d, strict=True):
        started = time.perf_counter()
        found = search(query)
        seconds.append(time.perf_counter() - started)
        distances = np.linalg.norm(data[found] - query, axis=1)
        recalls.append(recall_by_distance(sorted(distances.tolist()), truth.tolist()))
    return {
        "recall_at_10": float(np.mean(recalls)),
        "lost_queries": int(np.sum(np.asarray(recalls) < 0.5)),
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "p95_ms": float(np.percentile(seconds, 95) * 1000),
    }


def exact_distances(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's 10 nearest distances, ascending, from the searcher benchmark's exact truth."""
    truth, _ = exact_truth(data, queries, K)
    pairs = zip(truth, queries, strict=True)
    return np.stack([np.linalg.norm(data[ids] - query, axis=1) for ids, query in pairs])


def one_graph(conn: Any, data: np.ndarray, queries: np.ndarray, true_d: np.ndarray) -> dict:
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE one_graph (id bigint PRIMARY KEY, embedding vector({DIM}))")
        started = time.perf_counter()
        copy_rows(cur, "one_graph", data, None)
        load_s = time.perf_counter() - started
    result = {"copy_s": load_s} | timed_build(conn, "one_graph")
    print(f"one graph: built in {result['build_s']:.1f} s, {result['index_mb']:.0f} MB", flush=True)
    search = searcher_of(conn, "one_graph", None)
    for ef in EF_SEARCH:
        with conn.cursor() as cur:
            cur.execute(f"SET hnsw.ef_search = {ef}")
        result[f"ef{ef}"] = row = measured(search, data, queries, true_d)
        print(f"  ef_search {ef}: {row}", flush=True)
    return result


def partitioned(
    conn: Any,
    data: np.ndarray,
    queries: np.ndarray,
    true_d: np.ndarray,
    count: int,
    probes_tried: list[int],
    build_connections: tuple[str, int] | None,
) -> dict[str, Any]:
    """`build_connections`: (dsn, n) to build the partitions' indexes n at a time, each on its
    own connection; None for one CREATE INDEX on the parent."""
    table = f"cells_{count}"
    rng = np.random.default_rng(0)
    sample = data[rng.choice(len(data), size=min(SAMPLE_ROWS, len(data)), replace=False)]
    started = time.perf_counter()
    cells = fit(sample, Metric.L2, count)
    assigned = np.concatenate(
        [cells.assign(data[i : i + 50_000]) for i in range(0, len(data), 50_000)]
    )
    fit_s = time.perf_counter() - started
    sizes = np.bincount(assigned, minlength=count)
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {table} (id bigint, cell int, embedding vector({DIM})) "
            "PARTITION BY LIST (cell)"
        )
        for cell in range(count):
            cur.execute(f"CREATE TABLE {table}_{cell} PARTITION OF {table} FOR VALUES IN ({cell})")
        started = time.perf_counter()
        copy_rows(cur, table, data, assigned)
        load_s = time.perf_counter() - started
    result: dict[str, Any] = {"cells_fit_s": fit_s, "copy_s": load_s}
    result["largest_partition"] = int(sizes.max())
    result["smallest_partition"] = int(sizes.min())
    build = None
    if build_connections is not None:
        dsn, connections = build_connections
        build = builds_side_by_side(dsn, [f"{table}_{c}" for c in range(count)], connections)
    result |= timed_build(conn, table, build)
    print(f"{count} partitions ({sizes.min()}-{sizes.max()} rows): built in "
          f"{result['build_s']:.1f} s, {result['index_mb']:.0f} MB", flush=True)  # fmt: skip
    with conn.cursor() as cur:
        cur.execute("SET hnsw.ef_search = 100")
        cur.execute(
            f"EXPLAIN SELECT id FROM {table} WHERE cell = ANY(%s) ORDER BY embedding::{HALF} "
            f"<-> %s::{HALF} LIMIT {K}",
            (cells.nearest(queries[0])[:2], vector_literal(queries[0])),
        )
        result["plan_two_cells"] = [line for (line,) in cur.fetchall()]
    for probes in (p for p in probes_tried if p <= count):
        for ef in EF_SEARCH:
            with conn.cursor() as cur:
                cur.execute(f"SET hnsw.ef_search = {ef}")
            search = searcher_of(conn, table, replace(cells, probes=probes))
            row = measured(search, data, queries, true_d)
            result[f"probes{probes}_ef{ef}"] = row
            print(f"  {probes} cells, ef_search {ef}: {row}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--partitions", default="4,16", help="partition counts, comma-separated")
    parser.add_argument("--probes", default="1,2,3,4", help="cells a search walks, comma-separated")
    parser.add_argument(
        "--build-connections",
        type=int,
        default=0,
        help="build the partitions' indexes this many at a time, one connection each (0: one "
        "CREATE INDEX on the parent table, which builds them one after another)",
    )
    parser.add_argument("--no-one-graph", action="store_true", help="skip the one-graph baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "partitions.json")
    args = parser.parse_args()
    data, queries = datasets.clustered(args.rows, args.queries)
    true_d = exact_distances(data, queries)
    results: dict[str, Any] = {"rows": args.rows, "queries": args.queries}
    with tempfile.TemporaryDirectory(prefix="partitions-") as scratch:
        with EmbeddedPostgres(Path(scratch) / "pg") as postgres:
            conn = psycopg2.connect(postgres.dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW maintenance_work_mem")
                results["maintenance_work_mem"] = cur.fetchone()[0]
            if not args.no_one_graph:
                results["one_graph"] = one_graph(conn, data, queries, true_d)
            probes = [int(p) for p in args.probes.split(",")]
            apart = (postgres.dsn, args.build_connections) if args.build_connections else None
            results["build_connections"] = args.build_connections
            for count in (int(c) for c in args.partitions.split(",")):
                results[f"partitions_{count}"] = partitioned(
                    conn, data, queries, true_d, count, probes, apart
                )
            conn.close()
    write_results(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
