"""Where a graphs-by-cell build's time goes: the cells written, the whole-table read each
partial index makes, one cell's graph, and what the benchmarks' memory sampler costs.

    python bench/cell_build_parts.py [--rows 1000000]

Loads `--rows` clustered 1000-d rows (bench/datasets.py) into a HALFVEC collection through the
searcher's own VectorStore on a fresh embedded PostgreSQL (no recall check, no shadow
searches, nothing sampling the database), lets the bulk load's deferred build run as the
searcher runs it (cells fitted and written, then one graph per cell, two at a time), then
times, twice each, one core building:
- a partial HNSW index over no rows (what reading the table to find a cell's rows costs);
- the first cell's graph alone (that read, and the graph);
and one sample of the summed proportional set size of the PostgreSQL processes, as
bench/_processes.PostgresMemory takes it (its CPU time). Below 500k rows it also rewrites the
table with VACUUM FULL (which rebuilds the graphs too) and times both builds again on the
compact table. Prints what it measures; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._processes import PostgresMemory  # noqa: E402
from searcher.cell_graphs import DEFAULT_FROM_ROWS  # noqa: E402
from searcher.embedded import EmbeddedPostgres  # noqa: E402
from searcher.kinds import spec  # noqa: E402
from searcher.pool import ConnectionPool  # noqa: E402
from searcher.schema import DATA_SCHEMA  # noqa: E402
from searcher.settings import StoreSettings  # noqa: E402
from searcher.store import IndexKind, Item, VectorStore  # noqa: E402

COMPACT_BELOW = 500_000  # VACUUM FULL rebuilds every graph: minutes at 200k, far more at 1M


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    data, _ = datasets.clustered(rows, 10)
    with tempfile.TemporaryDirectory(prefix="cell-build-") as scratch:
        with EmbeddedPostgres(scratch) as pg:
            pool = ConnectionPool(pg.dsn, max_size=6)
            # Graphs by cell at any --rows (the searcher's default takes them from 200k).
            settings = StoreSettings(
                recall_sample=0, shadow_share=0, graph_cells_from=min(rows, DEFAULT_FROM_ROWS)
            )
            store = VectorStore(pool, settings)
            store.open()
            store.create_collection("c", data.shape[1], kind=IndexKind.HALFVEC)
            started = time.perf_counter()
            session = store.begin_upsert("c")
            for first in range(0, rows, 1000):
                stop = min(first + 1000, rows)
                session.write([Item(id=i, vector=data[i]) for i in range(first, stop)])
            loaded = time.perf_counter()
            session.close()  # the deferred build: cells fitted and written, then the graphs
            built = time.perf_counter() - loaded
            print(f"load {loaded - started:.1f} s, cells and graphs {built:.1f} s", flush=True)
            measure(pg.dsn, store, scratch, compact=rows < COMPACT_BELOW)
            store.close()
    return 0


def measure(dsn: str, store: VectorStore, data_dir: str, *, compact: bool) -> None:
    collection, _ = store.catalogue.get("c")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    fine = collection.fine_cells or 1

    def table_gb() -> float:
        cur.execute(
            sql.SQL("SELECT pg_relation_size({}::regclass)").format(
                sql.Literal(collection.qualified_table)
            )
        )
        size: int = cur.fetchone()[0]
        return size / 1e9

    def build_s(where: str) -> float:
        """Seconds to build, on one core, a partial index like a cell's graph over `where`."""
        cur.execute("SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 0")
        name = "parts_probe"
        started = time.perf_counter()
        cur.execute(
            sql.SQL(
                "CREATE INDEX {} ON {} USING hnsw ({} halfvec_l2_ops) "
                "WITH (m = 16, ef_construction = 200) WHERE {}"
            ).format(
                sql.Identifier(name),
                collection.table,
                spec(collection.kind).indexed_expression(collection, collection.generation),
                sql.SQL(where),
            )
        )
        took = time.perf_counter() - started
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(DATA_SCHEMA, name)))
        return took

    def both(label: str) -> None:
        for _ in range(2):
            print(f"{label}over no rows (the table read): {build_s('cell = -12345'):.2f} s")
            print(f"{label}the first cell's graph: {build_s(f'cell >= 0 AND cell < {fine}'):.2f} s")

    print(f"table {table_gb():.2f} GB, {collection.graph_cells} graphs", flush=True)
    both("")
    sampler = PostgresMemory(Path(data_dir), interval_s=3600)  # samples only when asked
    try:
        gb = sampler.peak_mb() / 1e3
    finally:
        sampler.stop()
    print(
        f"one memory sample ({gb:.2f} GB): {sampler.cpu_s / sampler.samples * 1000:.0f} ms of CPU",
        flush=True,
    )
    if compact:
        started = time.perf_counter()
        cur.execute(sql.SQL("VACUUM FULL {}").format(collection.table))
        print(f"VACUUM FULL {time.perf_counter() - started:.1f} s; table {table_gb():.2f} GB")
        both("compact: ")
    conn.close()


if __name__ == "__main__":
    sys.exit(main())
