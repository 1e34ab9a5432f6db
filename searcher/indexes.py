"""Building and replacing a collection's HNSW index, one generation at a time, and folding
fresh rows into it.

A build makes generation g+1 beside generation g (for BINARY: a quantizer fitted on the rows,
then the index over its codes), records it in the catalogue, and only then drops generation g.
Each generation is a partial index over the rows written before its build began (segment <=
its index_segment); rows written since are fresh, searched exactly, until a fold moves them
under the index (an UPDATE of their segment: PostgreSQL inserts them into the graph) or the
next build takes them in.
A live collection is rebuilt CONCURRENTLY, so searches and writes go on meanwhile; after a bulk
load into an empty collection the index is built in one plain pass, which is faster.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from psycopg2 import sql

from searcher import cell_graphs, recall
from searcher.build_checks import check_usable, spill_notice
from searcher.catalogue import Catalogue, Collection
from searcher.cells import CellStore
from searcher.generation_cells import CellWrites, GenerationCells
from searcher.kinds import spec
from searcher.locks import advisory_lock
from searcher.pool import ConnectionPool
from searcher.quantizers import drop_quantizers, fit_quantizer
from searcher.schema import DATA_SCHEMA, NO_CELL

logger = logging.getLogger(__name__)

MEMORY = "maintenance_work_mem"
MB = 1 << 20
MIN_BUILD_MEMORY = 64 * MB  # PostgreSQL's own default
# How a build's note names the graphs by cell it built with a repair's larger parameters.
REPAIRED_BEFORE = "graphs by cell repaired before"


class IndexBuilder:
    def __init__(
        self,
        pool: ConnectionPool,
        catalogue: Catalogue,
        cells: CellStore,
        *,
        maintenance_work_mem: str = "",
        graph_cells_from: int = cell_graphs.DEFAULT_FROM_ROWS,
        held_out_rows: int = 0,
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.cells = cells
        # Empty: the server's own setting (the embedded server sizes it from the machine).
        self.maintenance_work_mem = maintenance_work_mem
        # Collections of at least graph_cells_from rows take graphs by cell at their first
        # build after a bulk load (searcher.cell_graphs); 0: never.
        self.generation_cells = GenerationCells(pool, catalogue, cells, graph_cells_from)
        # Most rows each build keeps out of its graph for its check to search for (recall.py).
        self.held_out_rows = held_out_rows
        self.graph_builds = cell_graphs.GraphBuilds(pool)

    def indexable(self, collection: Collection) -> bool:
        return collection.dim <= spec(collection.kind).max_indexed_dim

    def create_empty(self, cur: Any, collection: Collection) -> None:
        """The index of a new collection, inside its creating transaction. BINARY waits for
        rows: its quantizer is fitted on them."""
        kind = spec(collection.kind)
        if self.indexable(collection) and not kind.needs_quantizer:
            cur.execute(kind.create_index(collection, collection.generation, concurrently=False))

    def drop_for_load(self, cur: Any, collection: Collection) -> None:
        """Drop the index before a bulk load into an empty collection (inside its transaction):
        building after loading is far faster than inserting into the graph row by row."""
        cell_graphs.drop_generation(cur, collection, concurrently=False)

    def build(
        self,
        collection: Collection,
        *,
        concurrently: bool,
        m: int = 0,
        ef_construction: int = 0,
        note: str = "",
    ) -> Collection:
        """Build the next generation of the index (with m / ef_construction if given), make it
        current and return the collection as recorded; serialised across searchers."""
        if not self.indexable(collection):
            return collection
        with self.autocommit() as cur, advisory_lock(cur, "build", collection.name):
            current, has_index = self.catalogue.get(collection.name, fresh=True)
            # The new generation takes in every row written so far: writers move on to the
            # next segment first, and what they write meanwhile stays fresh.
            sealed = current.growing_segment
            rows = _count_rows(cur, current)
            # Centroids for the rows they write next, fitted before they move on to them.
            target, cell_writes = self.generation_cells.choose(
                cur, current, sealed + 1, rows, first_graph=not has_index
            )
            self.catalogue.record(
                cur,
                current.name,
                growing_segment=sealed + 1,
                cells_segment=target.cells_segment,
            )
            # A sample of rows stays fresh, with their cells, out of the new graph: its check
            # searches for rows no graph holds, as a user's new picture is (recall.hold_out).
            cells = self.cells.of(target)
            recall.hold_out(cur, current, rows, self.held_out_rows, into=sealed + 1, cells=cells)
            target = replace(
                target,
                generation=current.generation + 1,
                m=m or current.m,
                ef_construction=ef_construction or current.ef_construction,
                index_segment=sealed,
                growing_segment=sealed + 1,
            )
            built = self._build_generation(
                cur,
                target,
                concurrently=concurrently,
                note=note,
                writes=cell_writes,
            )
            if built is None:
                return current  # nothing to fit a quantizer on yet: searches stay exact
            # The previous generation goes once the new one is recorded, and so do the
            # centroids of the rows it now holds.
            cell_graphs.drop_generation(cur, current, concurrently=concurrently)
            self.cells.forget_before(cur, target, sealed + 1)
            # Older ones go; the previous one stays one generation longer, for searchers whose
            # catalogue cache still names it.
            keep = (target.quantizer_name(), current.quantizer_name())
            drop_quantizers(cur, target.name, keep=keep)
        _log_built(target, *built, note)
        return self.catalogue.get(collection.name, fresh=True)[0]

    def rebuild_graphs(
        self,
        collection: Collection,
        graphs: list[int],
        *,
        m: int,
        ef_construction: int,
        note: str,
    ) -> Collection | None:
        """Build the graphs `graphs` of the collection's current graphs by cell again with `m`
        and `ef_construction`, in place (cell_graphs.GraphBuilds.rebuild), and record `note`;
        the collection as recorded, its recall to be measured again. None when a build
        replaced its generation meanwhile (that build's check follows)."""
        with self.autocommit() as cur, advisory_lock(cur, "build", collection.name):
            current, has_index = self.catalogue.get(collection.name, fresh=True)
            if not has_index or current.generation != collection.generation:
                return None
            started = time.monotonic()
            built = cell_graphs.built_graphs(cur, current)
            largest = int(1.1 * max(built[graph][0] for graph in graphs))
            memory = self._build_memory(cur, replace(current, m=m), rows=largest)
            notices = self.graph_builds.rebuild(
                current, graphs, m=m, ef_construction=ef_construction, memory=memory
            )
            check_usable(cur, current)
            spilled = spill_notice(notices)
            if spilled:
                logger.warning("a graph of %s went on on disk: %s", current.name, spilled)
                note = "; ".join([note, f"a rebuild spilled to disk ({spilled})"])
            self.catalogue.record(
                cur,
                current.name,
                recall=None,
                recall_sample=0,
                recall_measured_at=None,
                index_note=note,
            )
        logger.info(
            "rebuilt %d of the %d graphs by cell of %s (m=%d, ef_construction=%d) in %.1f s",
            *(len(graphs), current.graph_cells, current.name, m, ef_construction),
            time.monotonic() - started,
        )
        return self.catalogue.get(collection.name, fresh=True)[0]

    def _build_generation(
        self, cur: Any, target: Collection, *, concurrently: bool, note: str, writes: CellWrites
    ) -> tuple[int, float] | None:
        """Create `target`'s index (giving rows their cells first, as `writes` says; fitting
        its quantizer first for BINARY) and record it in the catalogue; (rows, seconds), or
        None when there are no rows to fit a quantizer on."""
        kind = spec(target.kind)
        started = time.monotonic()
        with _build_settings(cur, self._build_memory(cur, target)):
            # Without the statement time limit: a million rows took a minute.
            self.generation_cells.write(cur, target, writes)
            recorded: dict[str, Any] = {}
            if kind.needs_quantizer:
                recorded = fit_quantizer(cur, target)
                if not recorded["quantizer_rows"]:
                    return None
            # Graphs by cell that a repair rebuilt alone with larger m keep it (their cells' rows
            # asked for it); the others take the collection's.
            parameters = _repaired_graphs(cur, target)
            note = _noting_repaired(note, parameters)
            try:
                spilled = self._create(
                    cur, target, concurrently=concurrently, parameters=parameters
                )
                check_usable(cur, target)
            except BaseException:
                # A failed CONCURRENTLY build leaves an invalid index behind.
                cell_graphs.drop_generation(cur, target, concurrently=False)
                raise
            if spilled:
                logger.warning("the index build of %s went on on disk: %s", target.name, spilled)
                note = "; ".join(filter(None, [note, f"the build spilled to disk ({spilled})"]))
            cur.execute(sql.SQL("ANALYZE {}").format(target.table))
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(target.table))
            rows: int = cur.fetchone()[0]
            seconds = time.monotonic() - started
            self.catalogue.record(
                cur,
                target.name,
                index_generation=target.generation,
                index_segment=target.index_segment,
                hnsw_m=target.m,
                hnsw_ef_construction=target.ef_construction,
                built_rows=rows,
                built_at=datetime.now(UTC),
                build_seconds=seconds,
                recall=None,
                recall_sample=0,
                recall_measured_at=None,
                index_note=note,
                graph_cells=target.graph_cells,
                graph_probes=target.graph_probes,
                graph_fine_cells=target.fine_cells,
                **recorded,
            )
        return rows, seconds

    def _create(
        self,
        cur: Any,
        target: Collection,
        *,
        concurrently: bool,
        parameters: dict[int, tuple[int, int]],
    ) -> str:
        """CREATE INDEX of the target generation's graph, or of each of its graphs by cell
        (those in `parameters` with their own m and ef_construction); PostgreSQL's notice if a
        build spilled to disk, else ""."""
        if target.graph_cells:
            # Each graph holds its cell's rows: sized for the largest cell (cells are uneven:
            # at 1M, one of 80 held 27k rows, twice the mean) and the rows written meanwhile,
            # on each of the connections that build at once.
            builds = 1 if concurrently else self.graph_builds.connections
            largest = int(1.1 * cell_graphs.largest_cell(cur, target)[0])
            most_m = max([target.m, *(m for m, _ in parameters.values())])
            memory = self._build_memory(cur, replace(target, m=most_m), rows=largest, builds=builds)
            _, notices = self.graph_builds.build(
                target, concurrently=concurrently, memory=memory, parameters=parameters
            )
            return spill_notice(notices)
        # An index of this name can only be a leftover: a build of this generation that a
        # crash interrupted (invalid), or one that was never recorded. Never take it for the
        # new one.
        drop_index(cur, target.index_name(), concurrently=concurrently)
        cur.connection.notices.clear()
        cur.execute(
            spec(target.kind).create_index(target, target.generation, concurrently=concurrently)
        )
        return spill_notice(cur.connection.notices)

    def fresh_rows(self, collection: Collection) -> int:
        """Rows not in the current index: written since its build began, and not folded."""
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                    collection.table, collection.fresh
                )
            )
            rows: int = cur.fetchone()[0]
        return rows

    def fold(self, collection: Collection, rows: int, kept: int = 0) -> int | None:
        """Move up to `rows` fresh rows under the current index (PostgreSQL inserts each into
        the graph), but those in the first `kept` buckets (recall.kept_buckets); how many moved,
        or None while a build of the collection runs (it takes them in). Rows being written now
        are skipped, never waited for."""
        with (
            self.autocommit() as cur,
            advisory_lock(cur, "build", collection.name, wait=False, shared=True) as free,
        ):
            if not free:
                return None
            cur.execute("SET statement_timeout = 0")  # ~4 ms a row into a 100k graph
            try:
                fresh = collection.fresh
                if collection.graph_cells:
                    # Rows written without a cell first: no graph takes them as they are.
                    orphans = self._fold_orphans(cur, collection, rows)
                    if orphans:
                        return orphans
                    fresh = sql.SQL("{} AND cell <> {}").format(fresh, sql.Literal(NO_CELL))
                fresh = recall.not_kept(fresh, kept)
                cur.execute(
                    sql.SQL(
                        "UPDATE {table} SET segment = %(indexed)s WHERE id IN (SELECT id FROM "
                        "{table} WHERE {fresh} ORDER BY segment, id LIMIT %(rows)s "
                        "FOR UPDATE SKIP LOCKED)"
                    ).format(table=collection.table, fresh=fresh),
                    {"indexed": collection.index_segment, "rows": rows},
                )
                moved: int = cur.rowcount
            finally:
                cur.execute("RESET statement_timeout")
        return moved

    def _fold_orphans(self, cur: Any, collection: Collection, rows: int) -> int:
        cells = self.cells.of(collection)
        if cells is None:
            return 0
        cur.execute("BEGIN")
        try:
            moved = cell_graphs.give_orphans_cells(cur, collection, cells, rows)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return moved

    def _build_memory(
        self, cur: Any, collection: Collection, *, rows: int | None = None, builds: int = 1
    ) -> str:
        """maintenance_work_mem for building this collection's graph (of `rows` rows, else of
        all its rows; `builds` such builds at once): what the graph needs (so a small build
        does not reserve the server's whole setting: a parallel build takes all of it from
        shared memory up front), at most the server's setting between them. Configured
        explicitly, that value as it is."""
        if self.maintenance_work_mem:
            return self.maintenance_work_mem
        if rows is None:
            rows = _count_rows(cur, collection)
        need = spec(collection.kind).graph_bytes(rows, collection.dim, collection.m)
        cur.execute("SELECT setting::bigint * 1024 FROM pg_settings WHERE name = %s", (MEMORY,))
        most: int = cur.fetchone()[0] // builds
        if need > most:
            logger.warning(
                "the graph of %s (%d rows) needs about %.1f GB to build in memory; "
                "maintenance_work_mem allows %.1f GB: the build will spill to disk (slower). "
                "Raise it (--maintenance-work-mem, or the server's setting) to build faster",
                collection.name,
                rows,
                need / 1e9,
                most / 1e9,
            )
        return f"{max(MIN_BUILD_MEMORY, min(need, most)) // MB}MB"

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Any]:
        # CREATE INDEX CONCURRENTLY cannot run inside a transaction block.
        with self.pool.connection(bulk=True) as conn:
            old = conn.autocommit
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    yield cur
            finally:
                conn.autocommit = old


def _log_built(target: Collection, rows: int, seconds: float, note: str) -> None:
    graphs = f", {target.graph_cells} graphs by cell" if target.graph_cells else ""
    logger.info(
        "built %s index of %s (generation %d, %d rows, m=%d, ef_construction=%d%s) in %.1f s%s",
        *(target.kind.name, target.name, target.generation, rows, target.m),
        *(target.ef_construction, graphs, seconds, f": {note}" if note else ""),
    )


def _repaired_graphs(cur: Any, target: Collection) -> dict[int, tuple[int, int]]:
    """The (m, ef_construction) each graph by cell of `target`'s generation takes where a
    repair gave that of the current generation more than target's (cell_graphs.
    built_graphs): the larger of each."""
    if not target.graph_cells:
        return {}
    previous = replace(target, generation=target.generation - 1)
    return {
        cell: (max(m, target.m), max(ef_construction, target.ef_construction))
        for cell, (_, m, ef_construction) in cell_graphs.built_graphs(cur, previous).items()
        if m > target.m or ef_construction > target.ef_construction
    }


def _noting_repaired(note: str, parameters: dict[int, tuple[int, int]]) -> str:
    """A build's `note`, saying which graphs by cell it builds with a repair's `parameters`
    (instead of what an earlier build's note said of them)."""
    parts = [part for part in note.split("; ") if not part.startswith(REPAIRED_BEFORE)]
    if parameters:
        kept = ", ".join(
            f"{cell} (m={m}, ef_construction={ef})" for cell, (m, ef) in sorted(parameters.items())
        )
        parts.append(f"{REPAIRED_BEFORE}: {kept}")
    return "; ".join(filter(None, parts))


def _count_rows(cur: Any, collection: Collection) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(collection.table))
    rows: int = cur.fetchone()[0]
    return rows


@contextlib.contextmanager
def _build_settings(cur: Any, maintenance_work_mem: str) -> Iterator[None]:
    """The session settings of a build: its memory, and no statement timeout (the timeout
    bounds requests; a build's time grows with the data, a minute or more for 100k full
    vectors, and must not be cut short)."""
    cur.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(maintenance_work_mem)))
    cur.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        cur.execute("RESET maintenance_work_mem; RESET statement_timeout")


def drop_index(cur: Any, name: str, *, concurrently: bool) -> None:
    cur.execute(
        sql.SQL("DROP INDEX {} IF EXISTS {}").format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""),
            sql.Identifier(DATA_SCHEMA, name),
        )
    )
