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

import numpy as np
from psycopg2 import sql

from imgsearch.errors import Unavailable
from searcher.catalogue import INDEX_IS_VALID, Catalogue, Collection, quantizer_prefix
from searcher.cells import CellStore
from searcher.kinds import create_quantizer, spec
from searcher.pgvector_io import as_array, vector_literal
from searcher.pool import ConnectionPool
from searcher.schema import DATA_SCHEMA

logger = logging.getLogger(__name__)

MEMORY = "maintenance_work_mem"
MB = 1 << 20
MIN_BUILD_MEMORY = 64 * MB  # PostgreSQL's own default


class IndexBuilder:
    def __init__(
        self,
        pool: ConnectionPool,
        catalogue: Catalogue,
        cells: CellStore,
        *,
        maintenance_work_mem: str = "",
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.cells = cells
        # Empty: the server's own setting (the embedded server sizes it from the machine).
        self.maintenance_work_mem = maintenance_work_mem

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
        cur.execute(
            sql.SQL("DROP INDEX IF EXISTS {}").format(
                sql.Identifier(DATA_SCHEMA, collection.index_name())
            )
        )

    def build(
        self,
        collection: Collection,
        *,
        concurrently: bool,
        m: int = 0,
        ef_construction: int = 0,
        note: str = "",
    ) -> Collection:
        """Build the next generation of the index (with m / ef_construction if given) and make
        it current; returns the collection as recorded. Builds of one collection are serialised
        across searchers."""
        if not self.indexable(collection):
            return collection
        with self._autocommit() as cur, _advisory_lock(cur, "build", collection.name):
            current, _ = self.catalogue.get(collection.name, fresh=True)
            # The new generation takes in every row written so far: writers move on to the
            # next segment first, and what they write meanwhile stays fresh.
            sealed = current.growing_segment
            # Centroids for the rows they write next, fitted before they move on to them.
            cells = sealed + 1 if self.cells.fit_for(cur, current, sealed + 1) else 0
            self.catalogue.record(
                cur, current.name, growing_segment=sealed + 1, cells_segment=cells
            )
            target = replace(
                current,
                generation=current.generation + 1,
                m=m or current.m,
                ef_construction=ef_construction or current.ef_construction,
                index_segment=sealed,
                growing_segment=sealed + 1,
                cells_segment=cells,
            )
            built = self._build_generation(cur, target, concurrently=concurrently, note=note)
            if built is None:
                return current  # nothing to fit a quantizer on yet: searches stay exact
            # The previous generation goes once the new one is recorded, and so do the
            # centroids of the rows it now holds.
            _drop_index(cur, current.index_name(), concurrently=concurrently)
            self.cells.forget_before(cur, target, sealed + 1)
            # Older ones go; the previous one stays one generation longer, for searchers whose
            # catalogue cache still names it.
            self.drop_quantizers(
                cur, target.name, keep=(target.quantizer_name(), current.quantizer_name())
            )
        rows, seconds = built
        logger.info(
            "built %s index of %s (generation %d, %d rows, m=%d, ef_construction=%d) in %.1f s%s",
            collection.kind.name,
            collection.name,
            target.generation,
            rows,
            target.m,
            target.ef_construction,
            seconds,
            f": {note}" if note else "",
        )
        return self.catalogue.get(collection.name, fresh=True)[0]

    def _build_generation(
        self, cur: Any, target: Collection, *, concurrently: bool, note: str
    ) -> tuple[int, float] | None:
        """Create `target`'s index (fitting its quantizer first for BINARY) and record it in
        the catalogue; (rows, seconds), or None when there are no rows to fit a quantizer on."""
        kind = spec(target.kind)
        started = time.monotonic()
        with _build_settings(cur, self._build_memory(cur, target)):
            recorded: dict[str, Any] = {}
            if kind.needs_quantizer:
                recorded = self._fit_quantizer(cur, target)
                if not recorded["quantizer_rows"]:
                    return None
            # An index of this name can only be a leftover: a build of this generation that a
            # crash interrupted (invalid), or one that was never recorded. Never take it for
            # the new one.
            _drop_index(cur, target.index_name(), concurrently=concurrently)
            cur.connection.notices.clear()
            try:
                cur.execute(kind.create_index(target, target.generation, concurrently=concurrently))
                spilled = _spill_notice(cur.connection.notices)
                _check_usable(cur, target)
            except BaseException:
                # A failed CONCURRENTLY build leaves an invalid index behind.
                _drop_index(cur, target.index_name(), concurrently=False)
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
                **recorded,
            )
        return rows, seconds

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

    def fold(self, collection: Collection, rows: int) -> int | None:
        """Move up to `rows` fresh rows under the current index (PostgreSQL inserts each into
        the graph); how many moved, or None while a build of the collection runs (it takes
        them in). Rows being written now are skipped, never waited for."""
        with (
            self._autocommit() as cur,
            _advisory_lock(cur, "build", collection.name, wait=False, shared=True) as free,
        ):
            if not free:
                return None
            cur.execute("SET statement_timeout = 0")  # ~4 ms a row into a 100k graph
            try:
                cur.execute(
                    sql.SQL(
                        "UPDATE {table} SET segment = %(indexed)s WHERE id IN (SELECT id FROM "
                        "{table} WHERE {fresh} ORDER BY segment, id LIMIT %(rows)s "
                        "FOR UPDATE SKIP LOCKED)"
                    ).format(table=collection.table, fresh=collection.fresh),
                    {"indexed": collection.index_segment, "rows": rows},
                )
                moved: int = cur.rowcount
            finally:
                cur.execute("RESET statement_timeout")
        return moved

    def clean_up(self) -> dict[str, str]:
        """Drop what interrupted builds left: invalid indexes (a CONCURRENTLY build cut short by
        a crash) and indexes of generations the catalogue does not record (a build interrupted
        between its index and its record, or before dropping the previous one). Collections a
        searcher is building now are left alone. Says so in each collection's note; returns the
        collections cleaned, each with the upkeep it needs: "build" when its recorded index
        itself was invalid, or covers every row (made before fresh rows existed); "check"
        otherwise (the build that was cut short may have been a repair)."""
        collections = {c.name: c for c in self.catalogue.list()}
        with self._autocommit() as cur:
            cur.execute(
                "SELECT t.relname, c.relname, i.indisvalid, i.indpred IS NULL FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
                "WHERE c.relnamespace = %s::regnamespace AND starts_with(c.relname, 'hnsw_') "
                "ORDER BY 1, 2",
                (DATA_SCHEMA,),
            )
            found = cur.fetchall()
            cleaned: dict[str, str] = {}
            for table, index, valid, whole_table in found:
                collection = collections.get(table)
                recorded = collection.index_name() if collection else None
                if collection is None:
                    continue
                if valid and index == recorded:
                    if whole_table:
                        # Made before fresh rows existed: every addition went into its graph.
                        logger.info("%s: its index covers every row; built again as partial", table)
                        cleaned[table] = "build"
                    continue
                with _advisory_lock(cur, "build", table, wait=False) as locked:
                    if not locked:
                        continue  # another searcher is building it now
                    _drop_index(cur, index, concurrently=True)
                what = "an invalid index" if not valid else "an index no build recorded"
                note = f"dropped {what} ({index}) left by an interrupted build"
                if index == recorded or cleaned.get(table) == "build":
                    cleaned[table] = "build"
                else:
                    cleaned[table] = "check"
                if index == recorded:
                    note += "; it was the recorded one: the index is built again"
                logger.warning("%s: %s", table, note)
                previous = self.catalogue.get(table, fresh=True)[0].index_note
                self.catalogue.record(
                    cur, table, index_note="; ".join(filter(None, [note, previous]))
                )
        return cleaned

    def _build_memory(self, cur: Any, collection: Collection) -> str:
        """maintenance_work_mem for building this collection's graph: what the graph needs
        (so a small build does not reserve the server's whole setting: a parallel build takes
        all of it from shared memory up front), at most the server's setting. Configured
        explicitly, that value as it is."""
        if self.maintenance_work_mem:
            return self.maintenance_work_mem
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(collection.table))
        rows: int = cur.fetchone()[0]
        need = spec(collection.kind).graph_bytes(rows, collection.dim, collection.m)
        cur.execute("SELECT setting::bigint * 1024 FROM pg_settings WHERE name = %s", (MEMORY,))
        most: int = cur.fetchone()[0]
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

    def _fit_quantizer(self, cur: Any, collection: Collection) -> dict[str, Any]:
        """Fit the BINARY quantizer (per-dimension mean and standard deviation) on the stored
        rows and create its function for this generation."""
        source = spec(collection.kind).quantizer_input(collection.metric)
        cur.execute(
            sql.SQL(
                "SELECT count(*), avg(x), avg(x * x) FROM (SELECT {} AS x FROM {}) AS rows"
            ).format(sql.SQL(source), collection.table)
        )
        rows, mean, mean_square = cur.fetchone()
        if not rows:
            return {"quantizer_rows": 0}
        centre = as_array(mean)
        spread = np.sqrt(np.maximum(as_array(mean_square) - centre.astype(np.float64) ** 2, 0.0))
        spread = spread.astype(np.float32)
        cur.execute(create_quantizer(collection, collection.generation, centre, spread))
        return {
            "quantizer_rows": rows,
            "quantizer_centre": centre,
            "quantizer_spread": spread,
        }

    def drop_quantizers(self, cur: Any, name: str, *, keep: tuple[str, ...] = ()) -> None:
        """Drop a collection's quantizer functions but those in `keep`."""
        cur.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace "
            "AND starts_with(proname, %s)",
            (DATA_SCHEMA, quantizer_prefix(name)),
        )
        for (function,) in cur.fetchall():
            if function not in keep:
                cur.execute(
                    sql.SQL("DROP FUNCTION IF EXISTS {}(vector)").format(
                        sql.Identifier(DATA_SCHEMA, function)
                    )
                )

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[Any]:
        # CREATE INDEX CONCURRENTLY cannot run inside a transaction block.
        with self.pool.connection(bulk=True) as conn:
            old = conn.autocommit
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    yield cur
            finally:
                conn.autocommit = old


def _spill_notice(notices: list[str]) -> str:
    """PostgreSQL's notice that the HNSW graph outgrew maintenance_work_mem (from then on the
    build inserts row by row through the on-disk path, far slower), or ""."""
    for notice in notices:
        if "no longer fits into maintenance_work_mem" in notice:
            return " ".join(notice.split()).removeprefix("NOTICE: ")
    return ""


def _check_usable(cur: Any, collection: Collection) -> None:
    """Raise unless the collection's current index is valid and the planner walks it for a
    nearest-neighbour query (with sequential scans and sorts ruled out, so that a small table's
    cheaper plan does not hide an index that can never be used)."""
    cur.execute(INDEX_IS_VALID, (collection.qualified_index,))
    if not cur.fetchone()[0]:
        raise Unavailable(f"the new index of {collection.name!r} is not valid")
    cur.execute(sql.SQL("SELECT embedding FROM {} LIMIT 1").format(collection.table))
    row = cur.fetchone()
    if row is None:
        return  # nothing to search with: valid is all there is to check
    cur.execute("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
    try:
        cur.execute(
            sql.SQL("EXPLAIN SELECT id FROM {} WHERE {} ORDER BY {} LIMIT 10").format(
                collection.table,
                collection.indexed,
                spec(collection.kind).candidate_order(collection),
            ),
            {"query": vector_literal(as_array(row[0]))},
        )
        plan = "\n".join(line for (line,) in cur.fetchall())
    finally:
        cur.execute("ROLLBACK")
    new, previous = collection.index_name(), collection.index_name(collection.generation - 1)
    # While the previous generation exists the planner picks either when their expressions
    # are the same once inlined (a BINARY quantizer refitted on the same rows): then the new
    # one serves the same searches.
    if f" using {new} " not in plan and f" using {previous} " not in plan:
        raise Unavailable(f"searches of {collection.name!r} would not use its new index {new}")


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


@contextlib.contextmanager
def _advisory_lock(
    cur: Any, purpose: str, name: str, *, wait: bool = True, shared: bool = False
) -> Iterator[bool]:
    """A session lock on (purpose, name); with wait=False, yields False at once if another
    session holds it. Shared holders (folds) do not exclude each other, only the exclusive one
    (a build)."""
    key, kind = f"{purpose}:{name}", "_shared" if shared else ""
    if wait:
        cur.execute(f"SELECT pg_advisory_lock{kind}(hashtext(%s))", (key,))
    else:
        cur.execute(f"SELECT pg_try_advisory_lock{kind}(hashtext(%s))", (key,))
        if not cur.fetchone()[0]:
            yield False
            return
    try:
        yield True
    finally:
        cur.execute(f"SELECT pg_advisory_unlock{kind}(hashtext(%s))", (key,))


def _drop_index(cur: Any, name: str, *, concurrently: bool) -> None:
    cur.execute(
        sql.SQL("DROP INDEX {} IF EXISTS {}").format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""),
            sql.Identifier(DATA_SCHEMA, name),
        )
    )
