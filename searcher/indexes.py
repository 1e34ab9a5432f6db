"""Building and replacing a collection's HNSW index, one generation at a time.

A build makes generation g+1 beside generation g (for BINARY: a quantizer fitted on the rows,
then the index over its codes), records it in the catalogue, and only then drops generation g.
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

from searcher.catalogue import Catalogue, Collection, quantizer_prefix
from searcher.kinds import create_quantizer, spec
from searcher.pgvector_io import as_array
from searcher.pool import ConnectionPool
from searcher.schema import DATA_SCHEMA

logger = logging.getLogger(__name__)


class IndexBuilder:
    def __init__(
        self, pool: ConnectionPool, catalogue: Catalogue, *, maintenance_work_mem: str = ""
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
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
            target = replace(
                current,
                generation=current.generation + 1,
                m=m or current.m,
                ef_construction=ef_construction or current.ef_construction,
            )
            built = self._build_generation(cur, target, concurrently=concurrently, note=note)
            if built is None:
                return current  # nothing to fit a quantizer on yet: searches stay exact
            # The previous generation goes once the new one is recorded.
            _drop_index(cur, current.index_name(), concurrently=concurrently)
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
        with _build_settings(cur, self.maintenance_work_mem):
            recorded: dict[str, Any] = {}
            if kind.needs_quantizer:
                recorded = self._fit_quantizer(cur, target)
                if not recorded["quantizer_rows"]:
                    return None
            try:
                cur.execute(kind.create_index(target, target.generation, concurrently=concurrently))
            except BaseException:
                # A failed CONCURRENTLY build leaves an invalid index behind.
                _drop_index(cur, target.index_name(), concurrently=False)
                raise
            cur.execute(sql.SQL("ANALYZE {}").format(target.table))
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(target.table))
            rows: int = cur.fetchone()[0]
            seconds = time.monotonic() - started
            self.catalogue.record(
                cur,
                target.name,
                index_generation=target.generation,
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
        with self.pool.connection() as conn:
            old = conn.autocommit
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    yield cur
            finally:
                conn.autocommit = old


@contextlib.contextmanager
def _build_settings(cur: Any, maintenance_work_mem: str) -> Iterator[None]:
    """The session settings of a build: its memory, and no statement timeout (the timeout
    bounds requests; a build's time grows with the data, a minute or more for 100k full
    vectors, and must not be cut short)."""
    if maintenance_work_mem:
        cur.execute(
            sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(maintenance_work_mem))
        )
    cur.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        cur.execute("RESET maintenance_work_mem; RESET statement_timeout")


@contextlib.contextmanager
def _advisory_lock(cur: Any, purpose: str, name: str) -> Iterator[None]:
    cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"{purpose}:{name}",))
    try:
        yield
    finally:
        cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"{purpose}:{name}",))


def _drop_index(cur: Any, name: str, *, concurrently: bool) -> None:
    cur.execute(
        sql.SQL("DROP INDEX {} IF EXISTS {}").format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""),
            sql.Identifier(DATA_SCHEMA, name),
        )
    )
