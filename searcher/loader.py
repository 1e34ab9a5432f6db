"""Writing items: binary COPY (straight into the table, or staged and merged), and the bulk-load
session of one Upsert stream."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg2
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from imgsearch.errors import ImageSearchError
from searcher.catalogue import Collection
from searcher.cells import CellStore
from searcher.generation_cells import LOAD_FIT_ROWS
from searcher.indexes import IndexBuilder
from searcher.named_vectors import split_items
from searcher.pgvector_io import Item, encode_binary_copy
from searcher.pool import ConnectionPool
from searcher.validation import Limits, check_items, check_vector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int = 0
    updated: int = 0


class Loader:
    def __init__(
        self, pool: ConnectionPool, builder: IndexBuilder, cells: CellStore, limits: Limits
    ) -> None:
        self.pool = pool
        self.builder = builder
        self.cells = cells
        self.limits = limits

    def write(
        self,
        collection: Collection,
        items: Sequence[Item],
        *,
        try_plain_copy: bool = False,
        named: Sequence[tuple[Collection, Sequence[Item]]] = (),
    ) -> tuple[UpsertCounts, bool]:
        """Write one message in one transaction, into the collection's table and (`named`) the
        tables of its named vectors; returns the collection's counts and whether a plain COPY
        into its table did it (possible only when none of the ids exists yet)."""
        check_items(collection, items, self.limits)
        for table, rows in named:  # the same ids and texts: only the vectors are new
            for index, row in enumerate(rows):
                where = f"item {index} (id {row.id}), vector {table.vector_name!r}"
                check_vector(row.vector, table, where)
        if not items:
            return UpsertCounts(), False
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            counts, plain = self._write_table(cur, collection, items, try_plain_copy, 0)
            for stage, (table, rows) in enumerate(named, 1):
                self._write_table(cur, table, rows, plain, stage)
        return counts, plain

    def _write_table(
        self,
        cur: Any,
        collection: Collection,
        items: Sequence[Item],
        try_plain_copy: bool,
        stage: int,
    ) -> tuple[UpsertCounts, bool]:
        """Write `items` into one table inside the caller's transaction (staging table number
        `stage` when they must be merged)."""
        payload = encode_binary_copy(
            items, collection.dim, collection.growing_segment, self._cells(collection, items)
        )
        if try_plain_copy:
            # A bulk load of new ids: COPY straight into the table (half the work of staging
            # and merging). Any existing id aborts it; the merge below then runs.
            cur.execute("SAVEPOINT plain_copy")
            try:
                cur.copy_expert(
                    sql.SQL(
                        "COPY {} (id, label, uri, attributes, embedding, segment, cell) "
                        "FROM STDIN WITH (FORMAT binary)"
                    ).format(collection.table),
                    payload,
                )
                return UpsertCounts(inserted=len(items)), True
            except pg_errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT plain_copy")
                payload.seek(0)
        # One staging table per table the message writes, all dropped at its commit.
        staged = sql.Identifier(f"upsert_stage_{stage}")
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (id bigint, label text, uri text, attributes jsonb, "
                "embedding vector, segment integer, cell integer) ON COMMIT DROP"
            ).format(staged)
        )
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN WITH (FORMAT binary)").format(staged), payload)
        # An updated row becomes fresh again: its old version leaves the index's reach.
        cur.execute(
            sql.SQL(
                "INSERT INTO {table} AS t (id, label, uri, attributes, embedding, segment, cell) "
                "SELECT id, label, uri, attributes, embedding, segment, cell FROM "
                "{staged} ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label, "
                "uri = EXCLUDED.uri, attributes = EXCLUDED.attributes, "
                "embedding = EXCLUDED.embedding, segment = EXCLUDED.segment, "
                "cell = EXCLUDED.cell RETURNING (xmax = 0)"
            ).format(table=collection.table, staged=staged)
        )
        inserted = sum(1 for (was_insert,) in cur.fetchall() if was_insert)
        return UpsertCounts(inserted=inserted, updated=len(items) - inserted), False

    def _cells(self, collection: Collection, items: Sequence[Item]) -> np.ndarray | None:
        """Each item's cell among the centroids of the segment it is written to, if any."""
        if collection.cells_segment != collection.growing_segment:
            return None
        cells = self.cells.of(collection)
        if cells is None:
            return None
        return cells.assign(np.stack([item.vector for item in items]))

    def prepare_load(self, collection: Collection, has_index: bool) -> tuple[bool, bool]:
        """Before an Upsert stream: (whether the index build is deferred to its end, whether the
        collection is empty). An empty collection's index is dropped for the load. A missing
        index (a bulk load whose searcher was killed before building it, or a BINARY
        collection that never had rows) is built at the end."""
        if not self.builder.indexable(collection):
            return False, False
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(collection.table)
            )
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(collection.table))
            if cur.fetchone()[0]:
                if not has_index:
                    logger.warning(
                        "%s has rows but no index (an interrupted bulk load?): building it at "
                        "the end of this stream",
                        collection.described,
                    )
                return not has_index, False
            self.builder.drop_for_load(cur, collection)
        return True, True


class UpsertSession:
    """One Upsert stream. Into an empty collection, the HNSW index is dropped for the load and
    built once at close(): building after loading is far faster than inserting into the graph.
    The tables of the collection's named vectors are loaded alongside, message by message."""

    def __init__(
        self,
        loader: Loader,
        collection: Collection,
        has_index: bool,
        *,
        named: Sequence[tuple[Collection, bool]] = (),
        on_close: Callable[[Collection, UpsertCounts, bool], None],
        on_write: Callable[[], None] = lambda: None,
        expected_items: int = 0,
    ) -> None:
        self.loader = loader
        self.collection = collection
        self.named = [table for table, _ in named]
        self.counts = UpsertCounts()
        self.messages = 0
        self._on_close = on_close
        self._on_write = on_write
        # Per table (the collection's, then its named vectors'): whether its index is built
        # at close().
        self._index_deferred = []
        for table, indexed in [(collection, has_index), *named]:
            deferred, empty = loader.prepare_load(table, indexed)
            self._index_deferred.append(deferred)
            if empty:
                logger.info(
                    "bulk load into empty %s (%s items announced): index build deferred",
                    *(table.described, expected_items or "no count of its"),
                )
        # A bulk load that says it will fill an empty collection large enough for graphs by
        # cell has its cells fitted once it has written this many rows, and written as it goes
        # (searcher.generation_cells).
        self._generation_cells = loader.builder.generation_cells
        self.expected_items = expected_items
        self._cells_to_fit = self._index_deferred[0] and self._generation_cells.wanted(
            expected_items
        )
        # New ids are COPYed straight into the table; the first message holding an existing id
        # is rolled back to a savepoint and merged instead, and so is the rest of the stream.
        self._plain_copy = True

    def write(self, items: Sequence[Item]) -> UpsertCounts:
        named = split_items(self.collection, self.named, items)
        counts, plain = self.loader.write(
            self.collection, items, try_plain_copy=self._plain_copy, named=named
        )
        if items and not plain:
            # After the first conflict, stop trying: this stream is updating existing rows.
            self._plain_copy = False
        self.counts = UpsertCounts(
            self.counts.inserted + counts.inserted, self.counts.updated + counts.updated
        )
        self.messages += 1
        self._on_write()
        if self._cells_to_fit and self.counts.inserted >= LOAD_FIT_ROWS:
            self._cells_to_fit = False
            self._fit_cells()
        return counts

    def _fit_cells(self) -> None:
        """Fit the cells of the rows this load writes next, in the collection's table and in
        each of its named vectors' whose index is built at the end (each table its own cells,
        as its build would fit them). What it wrote stays written if a fit fails: the build at
        its end then writes every row's cell of that table."""
        tables = [self.collection, *self.named]
        for index, (table, deferred) in enumerate(zip(tables, self._index_deferred, strict=True)):
            if not deferred:
                continue
            try:
                tables[index] = self._generation_cells.fit_during_load(table, self.expected_items)
            except (psycopg2.Error, ImageSearchError) as exc:
                logger.warning(
                    "%s: cells not fitted during its bulk load (%s): the build writes them",
                    *(table.described, exc),
                )
        self.collection, self.named = tables[0], tables[1:]

    def close(self) -> None:
        deferred, self._index_deferred = self._index_deferred, [False] * len(self._index_deferred)
        for table, build in zip([self.collection, *self.named], deferred, strict=True):
            self._on_close(table, self.counts, build)
