"""Graphs by coarse cell: a large collection's index as one small HNSW graph per cell.

One graph over a million rows took 25 minutes to build here and reached recall 0.97 at the
highest effort; the same rows as 64 graphs, one per coarse cell (searcher.cells), built two at
a time in 9.5 minutes and a search walking only its query's nearest cell's graph found 0.999
of the true neighbours at a sixth of the time (bench/partitions.py, bench/RESULTS.md). Small
graphs build in memory and fast, and each one holds the rows near each other.

Each graph is a partial index of the collection's table (WHERE segment <= index_segment AND
cell = k; or, with finer cells, the range of cells k × fine_cells up to the next graph's) rather
than a partition: ids stay unique across the table (Upsert's ON CONFLICT),
and a row moves from the fresh rows into its cell's graph by the same UPDATE of its segment as
before. Every row of a collection with graphs by cell carries its cell among one set of
centroids, fitted at the collection's first build by cell and kept by every later build, so a
cell written once is right for good. A row written without a cell (a writer that had not yet
seen that build) is in no graph: a partial index finds such rows, a search scans them
exactly, and a fold gives them their cells.

A collection takes graphs by cell when its index is first built after a bulk load (no graph
to keep up while every row's cell is written) and it holds at least `from_rows` rows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import psycopg2.errors
from psycopg2 import sql

from imgsearch.errors import Unavailable
from searcher.catalogue import Collection
from searcher.cells import MAX_CELLS, Cells
from searcher.kinds import spec
from searcher.pgvector_io import (
    as_array,
    decode_binary_copy_versioned_vectors,
    encode_id_version_cell_copy,
)
from searcher.pool import BULK_WORKERS, ConnectionPool
from searcher.schema import DATA_SCHEMA, NO_CELL

logger = logging.getLogger(__name__)

# Rows per graph: 16 graphs at 200k rows and 64 at 1M each held ~12-16k rows and found 0.996+
# of the true neighbours walking only the nearest cell; 4 graphs at 200k (50k rows each) did no
# better than one graph (bench/partitions.py).
ROWS_PER_GRAPH = 12_500
# Collections this large take graphs by cell at their first build after a bulk load. Not from
# 100k: there, as 8 graphs, four builds calibrated within one ladder step, but a fifth needed
# ef_search 1000 (stop 39), and one graph's effort is no worse (ef_search 320 and 400, stop
# 38). Their fresh rows are now sorted as finely as one graph's (Cells.fine), which graphs by
# cell lacked when stop 38 measured a search's p50 doubling during additions at 100k.
DEFAULT_FROM_ROWS = 200_000
# Setting a graph's parameters before a repair rebuilds it: how long each try may hold the
# table's searches back, the pause between tries, and how many tries.
SET_PARAMETERS_WAIT_MS = 50
SET_PARAMETERS_PAUSE_S = 0.5
SET_PARAMETERS_TRIES = 120
# The suffix of the copy REINDEX CONCURRENTLY builds beside an index.
REINDEX_COPY = "_ccnew"
# The table's pages read back per COPY when every row's cell is written: ~30k rows (120 MB of
# 1000-d vectors).
PAGES_PER_READ = 256


def graph_count(rows: int) -> int:
    """How many graphs by cell for `rows` rows: one per ROWS_PER_GRAPH, 2 to MAX_CELLS."""
    return max(2, min(MAX_CELLS, rows // ROWS_PER_GRAPH))


def orphan_index_name(name: str) -> str:
    """The partial btree index of a collection's rows written without a cell."""
    return "nocell_" + hashlib.md5(name.encode()).hexdigest()


def create_orphan_index(cur: Any, collection: Collection) -> None:
    """Index the rows that no graph by cell takes (written without a cell): a search scans
    them exactly, and a fold finds them, without reading the table."""
    cur.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (segment) WHERE cell = {}").format(
            sql.Identifier(orphan_index_name(collection.name)),
            collection.table,
            sql.Literal(NO_CELL),
        )
    )


def assign_cells(
    cur: Any, collection: Collection, cells: Cells, up_to_segment: int, *, missing_only: bool
) -> int:
    """Write the cell of every row of segments up to `up_to_segment` (`missing_only`: of those
    without one), reading the table a range of pages at a time; how many rows. Only where no
    graph holds those rows: each row's new version goes into every index whose predicate it
    meets."""
    cur.execute(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
        (collection.qualified_table,),
    )
    pages: int = cur.fetchone()[0]
    # The caller's cursor commits each statement (a build's): the table is dropped at the end.
    cur.execute("DROP TABLE IF EXISTS assigned_cells")
    cur.execute("CREATE TEMP TABLE assigned_cells (id bigint, version bigint, cell integer)")
    written = 0
    for first in range(0, pages + 1, PAGES_PER_READ):
        ids, versions, vectors = _read_pages(
            cur, collection, first, first + PAGES_PER_READ, up_to_segment, missing_only
        )
        if not len(ids):
            continue
        copy = encode_id_version_cell_copy(ids, versions, cells.assign(vectors))
        cur.copy_expert("COPY assigned_cells FROM STDIN (FORMAT binary)", copy)
        written += len(ids)
    # Only the row versions read get the cells of their vectors: a row rewritten meanwhile
    # (by a writer that saw the build, into a later segment with its new vector's cell; or by
    # one that did not, without a cell) is left as it is, and a row without a cell is found by
    # its partial index and given one by the next fold.
    cur.execute(
        sql.SQL(
            "UPDATE {} AS t SET cell = a.cell FROM assigned_cells AS a WHERE t.id = a.id "
            "AND t.xmin::text::bigint = a.version AND t.segment <= {}"
        ).format(collection.table, sql.Literal(up_to_segment))
    )
    cur.execute("DROP TABLE assigned_cells")
    # The UPDATE left a dead version of every row. Vacuumed now, unthrottled (the cells of 1M
    # rows took 52.4 s with it, 56.0 s without: bench/RESULTS.md): the graphs' builds hold
    # autovacuum off, and it would otherwise read the whole table, throttled, just as searches
    # begin.
    cur.execute(sql.SQL("VACUUM {}").format(collection.table))
    return written


def largest_cell(cur: Any, collection: Collection) -> tuple[int, int]:
    """(rows in the largest graph's cell, rows in all of them) among those the collection's
    index holds."""
    cur.execute(
        sql.SQL(
            "SELECT coalesce(max(rows), 0), coalesce(sum(rows), 0) FROM (SELECT count(*) AS "
            "rows FROM {} WHERE {} GROUP BY {}) AS cells"
        ).format(collection.table, collection.indexed, collection.graph_of_cell)
    )
    largest, rows = cur.fetchone()
    return int(largest), int(rows)


def built_graphs(cur: Any, collection: Collection) -> dict[int, tuple[int, int, int]]:
    """(rows, m, ef_construction) of each of the collection's current graphs by cell, as
    PostgreSQL keeps them: the rows its build took in (folds add a few since), and the
    parameters it was built with (a repair's, where it rebuilt the graph alone:
    GraphBuilds.rebuild), without reading the table."""
    names = {collection.index_name(cell=cell): cell for cell in range(collection.graph_cells)}
    cur.execute(
        "SELECT relname, greatest(reltuples, 0)::bigint, reloptions FROM pg_class WHERE "
        "relnamespace = %s::regnamespace AND relname = ANY(%s)",
        (DATA_SCHEMA, list(names)),
    )
    found: dict[int, tuple[int, int, int]] = {}
    for name, rows, options in cur.fetchall():
        given = dict(option.split("=", 1) for option in options or [])
        m = int(given.get("m", collection.m))
        ef_construction = int(given.get("ef_construction", collection.ef_construction))
        found[names[name]] = int(rows), m, ef_construction
    return found


def rebuilt_graphs(cur: Any, collection: Collection) -> list[tuple[int, int, int]]:
    """(graphs, m, ef_construction) of the collection's graphs by cell built with other
    parameters than the collection's (a repair's: GraphBuilds.rebuild), the most graphs first;
    empty where every graph has the collection's."""
    if collection.graph_cells <= 1:
        return []
    own = (collection.m, collection.ef_construction)
    rebuilt = Counter(
        (m, ef_construction)
        for _, m, ef_construction in built_graphs(cur, collection).values()
        if (m, ef_construction) != own
    )
    return [(graphs, m, ef_construction) for (m, ef_construction), graphs in rebuilt.most_common()]


def _read_pages(
    cur: Any,
    collection: Collection,
    first: int,
    end: int,
    up_to_segment: int,
    missing_only: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, row versions, vectors) of the rows of pages [first, end) in segments up to
    `up_to_segment` (`missing_only`: without a cell)."""
    out = io.BytesIO()
    cur.copy_expert(
        sql.SQL(
            # xmin, the transaction that wrote the row version: a rewritten row has another.
            "COPY (SELECT id, xmin::text::bigint, embedding FROM {} WHERE ctid >= {}::tid "
            "AND ctid < {}::tid AND segment <= {}{}) TO STDOUT (FORMAT binary)"
        ).format(
            collection.table,
            sql.Literal(f"({first},0)"),
            sql.Literal(f"({end},0)"),
            sql.Literal(up_to_segment),
            sql.SQL(" AND cell = {}").format(sql.Literal(NO_CELL)) if missing_only else sql.SQL(""),
        ),
        out,
    )
    return decode_binary_copy_versioned_vectors(out.getvalue(), collection.dim)


def give_orphans_cells(cur: Any, collection: Collection, cells: Cells, rows: int) -> int:
    """Give up to `rows` fresh rows written without a cell their cells and move them under the
    index (into their cells' graphs), in the caller's transaction; how many moved. Rows being
    written now are skipped."""
    cur.execute(
        sql.SQL(
            "SELECT id, embedding FROM {} WHERE cell = {} ORDER BY segment, id LIMIT %s "
            "FOR UPDATE SKIP LOCKED"
        ).format(collection.table, sql.Literal(NO_CELL)),
        (rows,),
    )
    found = cur.fetchall()
    if not found:
        return 0
    ids = [row[0] for row in found]
    assigned = cells.assign(np.stack([as_array(row[1]) for row in found]))
    cur.execute(
        sql.SQL(
            "UPDATE {} AS t SET segment = %s, cell = a.cell FROM unnest(%s::bigint[], "
            "%s::integer[]) AS a(id, cell) WHERE t.id = a.id"
        ).format(collection.table),
        (collection.index_segment, ids, [int(cell) for cell in assigned]),
    )
    moved: int = cur.rowcount
    return moved


class GraphBuilds:
    """Builds a generation's graphs by cell: after a bulk load several at once, each on a
    connection of its own (one CREATE INDEX builds on one core: PostgreSQL's parallel workers
    help a big graph, not many small ones); CONCURRENTLY one after another, since PostgreSQL
    runs one concurrent build per table at a time (two deadlock)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        # The builder holds one bulk connection already; the others build beside it.
        self.connections = max(1, min(BULK_WORKERS, pool.max_bulk - 1))

    def build(
        self,
        target: Collection,
        *,
        concurrently: bool,
        memory: str,
        parameters: dict[int, tuple[int, int]] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Create every graph of `target`'s generation, each with target's m and
        ef_construction or its own in `parameters` (by cell); (names built, PostgreSQL's
        notices)."""
        kind = spec(target.kind)
        notices: list[str] = []
        parameters = parameters or {}

        def build_one(cell: int) -> str:
            with self._build_connection(memory, alone=concurrently) as cur:
                name = target.index_name(cell=cell)
                _drop(cur, name, concurrently=concurrently)
                own = target
                if cell in parameters:
                    m, ef_construction = parameters[cell]
                    own = replace(target, m=m, ef_construction=ef_construction)
                try:
                    cur.execute(
                        kind.create_index(
                            own, target.generation, concurrently=concurrently, cell=cell
                        )
                    )
                finally:
                    notices.extend(cur.connection.notices)
                    cur.connection.notices.clear()
                return name

        connections = 1 if concurrently else self.connections
        with concurrent.futures.ThreadPoolExecutor(connections) as workers:
            built = list(workers.map(build_one, range(target.graph_cells)))
        return built, notices

    def rebuild(
        self,
        collection: Collection,
        graphs: list[int],
        *,
        m: int,
        ef_construction: int,
        memory: str,
    ) -> list[str]:
        """Build the collection's current graphs of `graphs` again, one after another, with `m`
        and `ef_construction`; PostgreSQL's notices. Each graph is rebuilt by REINDEX
        CONCURRENTLY after its parameters are set: searches and writes go on, the graph keeps
        its name, and a crash leaves only an invalid copy (`…_ccnew` or `…_ccold`) that the
        start-up's clean-up drops, never a missing graph."""
        notices: list[str] = []
        for cell in graphs:
            graph = collection.index_name(cell=cell)
            name = sql.Identifier(DATA_SCHEMA, graph)
            with self._build_connection(memory, alone=True) as cur:
                _set_parameters(cur, name, m, ef_construction)
                try:
                    cur.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(name))
                except BaseException:
                    # Its copy stays behind, invalid but kept up by every write until dropped
                    # (else by the next start's clean-up).
                    with contextlib.suppress(psycopg2.Error):
                        _drop(cur, graph + REINDEX_COPY, concurrently=True)
                    raise
                finally:
                    notices.extend(cur.connection.notices)
                    cur.connection.notices.clear()
        return notices

    @contextlib.contextmanager
    def _build_connection(self, memory: str, *, alone: bool) -> Iterator[Any]:
        """A connection set up for builds; `alone`: the only one building (it may take
        PostgreSQL's parallel workers), else one of several (it takes none)."""
        with self.pool.connection(bulk=True) as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        sql.SQL(
                            "SET maintenance_work_mem = {}; SET statement_timeout = 0; "
                            "SET max_parallel_maintenance_workers = {}"
                        ).format(
                            sql.Literal(memory),
                            sql.SQL("DEFAULT") if alone else sql.Literal(0),
                        )
                    )
                    conn.notices.clear()
                    try:
                        yield cur
                    finally:
                        cur.execute(
                            "RESET maintenance_work_mem; RESET statement_timeout; "
                            "RESET max_parallel_maintenance_workers"
                        )
            finally:
                conn.autocommit = False


def drop_generation(cur: Any, collection: Collection, *, concurrently: bool) -> None:
    """Drop every graph of the collection's current generation."""
    for name in collection.index_names():
        _drop(cur, name, concurrently=concurrently)


def _drop(cur: Any, name: str, *, concurrently: bool) -> None:
    cur.execute(
        sql.SQL("DROP INDEX {} IF EXISTS {}").format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""),
            sql.Identifier(DATA_SCHEMA, name),
        )
    )


def _set_parameters(cur: Any, index: sql.Identifier, m: int, ef_construction: int) -> None:
    """Set a graph's m and ef_construction for its next build. pgvector takes an ACCESS
    EXCLUSIVE lock on the index for it, which searches of the table queue behind while it
    waits: each try waits at most SET_PARAMETERS_WAIT_MS, then lets them through."""
    cur.execute("SET lock_timeout = %s", (f"{SET_PARAMETERS_WAIT_MS}ms",))
    try:
        for attempt in itertools.count(1):
            try:
                cur.execute(
                    sql.SQL("ALTER INDEX {} SET (m = {}, ef_construction = {})").format(
                        index, sql.Literal(m), sql.Literal(ef_construction)
                    )
                )
                return
            except psycopg2.errors.LockNotAvailable:
                if attempt >= SET_PARAMETERS_TRIES:
                    raise Unavailable(
                        f"the graph {index.strings[-1]} is held by long transactions: its "
                        f"parameters could not be set in {SET_PARAMETERS_TRIES} tries"
                    ) from None
                time.sleep(SET_PARAMETERS_PAUSE_S)
    finally:
        cur.execute("RESET lock_timeout")
