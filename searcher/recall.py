"""Measured recall: of an index after its build, and of live searches (a share of them re-run
exactly in the background).

A build's recall is measured on held-out queries against exact search by numpy over every stored
vector. Held-out queries are, where a build has them, rows it kept out of its graph (a sample
moved to the fresh rows before it began, found by searches as any fresh row is until its check
has searched for them, then folded in): draws of the collection's own distribution that no
graph holds, as a user's new picture is. Otherwise (collections too small to spare them,
checks after folds): stored vectors moved by half their distance to their nearest neighbour.

Why not the stored vectors themselves: each is a node of the graph and reaches its neighbours
through its own edges, so they overstate the recall a new query gets (0.992 against 0.9695 on
held-out queries at 1M rows, bench/RESULTS.md). A stored vector moved in a random direction
keeps nearly the same neighbours (in 1000-d the move is nearly orthogonal to every difference
between rows: 95% of such a query's top 10 were its row and that row's own top 9, on 100k
clustered rows), so it still finds them through its row's edges: at 1M rows such queries said
0.994 where 200 new draws of the same data got 0.976 (bench/RESULTS.md).
"""

from __future__ import annotations

import io
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg2 import sql

from imgsearch.records import Hit
from searcher.catalogue import Collection, Metric
from searcher.cells import Cells
from searcher.exact_neighbours import ExactNeighbours
from searcher.pgvector_io import (
    copy_sample,
    decode_binary_copy_ids_vectors,
    decode_binary_copy_versioned_vectors,
)
from searcher.pool import ConnectionPool
from searcher.queries import Filter, SearchResult
from searcher.schema import NO_CELL

logger = logging.getLogger(__name__)

RECALL_AT = 10
# Two distances this close count as equal (PostgreSQL sums in float32, numpy here in float64).
_TIE = 1e-4


def recall_by_distance(found: Sequence[float], true_distances: Sequence[float]) -> float:
    """The share of the true k nearest that a search found, judged by distance so that ties
    (duplicate vectors, equal distances) do not count as misses."""
    k = len(true_distances)
    if k == 0:
        return 1.0
    kth = float(true_distances[-1])
    hits = sum(1 for d in list(found)[:k] if d <= kth + _TIE * max(1.0, abs(kth)))
    return hits / k


Search = Callable[[np.ndarray, int], list[Hit]]


# A held-out query lies this share of the way from a stored vector to its nearest neighbour.
HELD_OUT_STEP = 0.5
# A collection's sample holds one held-out query per this many rows, at least SMALLEST_SAMPLE
# and at most the configured size. On a build of 100k clustered rows, random samples of 200 of
# 1,500 such queries had the calibration (then on a ladder of 2x steps) choose ef_search 200,
# 400, 700 or 1000 (the mean of 200 moves by ~0.006: 1-2% of the queries are lost, the rest
# near 1); samples of 1,000 chose 400 or 700 (bench/calibration.py --seed 2, bench/RESULTS.md).
ROWS_PER_SAMPLED_QUERY = 50
SMALLEST_SAMPLE = 200
# Builds of at least this many rows keep their sample out of the graph: below it, the sample
# would be over 2% of the rows the graph is measured without.
HOLD_OUT_FROM_ROWS = ROWS_PER_SAMPLED_QUERY * SMALLEST_SAMPLE
NO_ID = np.int64(-1)  # a query that is no stored row: none of them is left out of its results
HELD_OUT_ROWS = "rows held out of the build"
HELD_OUT_OF_FOLDS = "rows added since, held out of the folds"
# Rows kept out of folds are picked by a hash of their id: out of this many buckets, the first few.
KEPT_BUCKETS = 1024
MOVED_VECTORS = "stored vectors moved halfway to their nearest neighbour"


def sample_recall(recalls: np.ndarray) -> float:
    """A sample's recall@10: the mean of its queries', rounded as it is stored and shown (a
    `real` column, 3 decimals in notes): the mean of 200 tenths is often exactly half-way
    (0.9985), and the note and GetStats then rounded the float64 and the float4 of it
    different ways."""
    return round(float(recalls.mean()), 4)


def kept_buckets(built_rows: int, recheck_rows: int, most: int) -> int:
    """How many of the KEPT_BUCKETS the folds of an indexed collection leave fresh, so that its
    recheck (due once `recheck_rows` rows are added) has a sample of them to measure on, no
    graph holding them: sample_size of the collection's rows out of those added. 0 (fold
    every row) where a build would hold none out (below HOLD_OUT_FROM_ROWS rows)."""
    if built_rows < HOLD_OUT_FROM_ROWS or recheck_rows <= 0:
        return 0
    share = sample_size(built_rows, most) / recheck_rows
    return min(KEPT_BUCKETS, math.ceil(share * KEPT_BUCKETS))


def not_kept(fresh: sql.Composable, kept: int) -> sql.Composable:
    """The condition `fresh`, less the rows in the first `kept` buckets (see kept_buckets)."""
    if not kept:
        return fresh
    bucket = sql.SQL("(hashint8(id) & {})").format(sql.Literal(KEPT_BUCKETS - 1))
    return sql.SQL("{} AND {} >= {}").format(fresh, bucket, sql.Literal(kept))


def sample_size(rows: int, most: int) -> int:
    """How many held-out queries measure a collection of `rows` rows: one per
    ROWS_PER_SAMPLED_QUERY rows, at least SMALLEST_SAMPLE, at most `most`."""
    return min(most, max(SMALLEST_SAMPLE, rows // ROWS_PER_SAMPLED_QUERY))


@dataclass(frozen=True)
class RecallSample:
    """Held-out queries with their exact nearest distances over every stored vector: computed
    once, then any number of search settings measured against them."""

    queries: np.ndarray
    true_distances: np.ndarray  # (queries, RECALL_AT), ascending, without the query's own row
    # The stored row each query is (a row held out of the build), left out of its results;
    # NO_ID for a query that is no row. None: no query is a row.
    own_ids: np.ndarray | None = None
    source: str = MOVED_VECTORS  # what the queries are, as a note says it
    # Graphs by cell: for each true neighbour (queries, RECALL_AT), how many of its query's
    # nearest graphs a search walks to reach it (its graph's rank + 1; 0: a row in no graph,
    # which every search scans; -1: none). None: not known (no graphs by cell).
    neighbour_walks: np.ndarray | None = None
    # Graphs by cell: each true neighbour's row id and the graph that holds it (-1: none, or
    # a row in no graph); None where neighbour_walks is.
    neighbour_ids: np.ndarray | None = None
    neighbour_graphs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def walks_holding(self, share: float) -> int | None:
        """The fewest graphs by cell a search walks for those to hold `share` of the sample's
        true neighbours (at least 1); None where the sample does not know."""
        if self.neighbour_walks is None:
            return None
        walks = np.sort(self.neighbour_walks[self.neighbour_walks >= 0], axis=None)
        if not len(walks):
            return None
        return max(1, int(walks[max(0, math.ceil(share * len(walks)) - 1)]))

    def share_in_walks(self, walks: int) -> float | None:
        """The share of the sample's true neighbours in their query's nearest `walks` graphs
        by cell; None where the sample does not know."""
        if self.neighbour_walks is None or not (self.neighbour_walks >= 0).any():
            return None
        known = self.neighbour_walks[self.neighbour_walks >= 0]
        return float(np.mean(known <= walks))

    @property
    def described(self) -> str:
        return f"{len(self)} {self.source}"

    def recalls(self, search: Search) -> np.ndarray:
        """recall@10 of `search` for each query of the sample."""
        return np.asarray(
            [
                recall_by_distance([h.distance for h in hits], truth)
                for hits, truth in zip(self._searched(search), self.true_distances, strict=True)
            ]
        )

    def losses_by_graph(
        self, search: Search, walks: int, graphs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Graphs by cell: each query's recall@10 under `search` (which walks each query's
        nearest `walks` graphs), and for each of the `graphs` graphs how many true neighbours
        it held that a search walking it did not find: what that graph lost. Neighbours in
        graphs not walked are lost between graphs, which no graph's repair finds."""
        if self.neighbour_ids is None or self.neighbour_graphs is None:
            raise ValueError("the sample does not know its neighbours' graphs")
        assert self.neighbour_walks is not None
        recalls, missed = [], np.zeros(graphs, dtype=np.int64)
        searched = zip(self._searched(search), self.true_distances, strict=True)
        for query, (hits, truth) in enumerate(searched):
            recalls.append(recall_by_distance([h.distance for h in hits], truth))
            found = {h.id for h in hits}
            for place, row in enumerate(self.neighbour_ids[query]):
                graph = self.neighbour_graphs[query, place]
                walked = 1 <= self.neighbour_walks[query, place] <= walks
                if graph >= 0 and walked and int(row) not in found:
                    missed[graph] += 1
        return np.asarray(recalls), missed

    def _searched(self, search: Search) -> Iterator[list[Hit]]:
        """Each query's RECALL_AT hits, less the query's own row."""
        own_ids = self.own_ids if self.own_ids is not None else np.full(len(self), NO_ID)
        for query, own in zip(self.queries, own_ids, strict=True):
            if own == NO_ID:
                yield search(query, RECALL_AT)
            else:  # a held-out row finds itself among the fresh rows: the rest is measured
                yield [h for h in search(query, RECALL_AT + 1) if h.id != own][:RECALL_AT]


def held_out(
    stored: np.ndarray, ids: np.ndarray, metric: Metric, search: Search, seed: int = 0
) -> np.ndarray:
    """Queries near the stored vectors but none of them: each moved in a random direction by
    HELD_OUT_STEP of its distance to its nearest other row (found by `search`, the live path;
    only its scale matters). Under cosine the step is the chord to that neighbour; under inner
    product, whose distances say nothing of space, a twentieth of the vector's length."""
    rng = np.random.default_rng(seed)
    queries = []
    for own_id, vector in zip(ids, stored, strict=True):
        length = float(np.linalg.norm(vector))
        neighbour = next((h.distance for h in search(vector, 2) if h.id != own_id), None)
        if metric is Metric.INNER_PRODUCT or neighbour is None:
            step = 0.05 * length
        elif metric is Metric.COSINE:
            step = length * float(np.sqrt(2 * max(neighbour, 0.0)))
        else:
            step = float(neighbour)
        direction = rng.normal(size=vector.shape)
        direction /= max(float(np.linalg.norm(direction)), 1e-30)
        queries.append(vector + HELD_OUT_STEP * step * direction)
    return np.asarray(queries, dtype=np.float32)


def hold_out(
    cur: Any, collection: Collection, rows: int, most: int, *, into: int, cells: Cells | None
) -> int:
    """Before a build of the collection's rows (of segments up to `into` - 1), move a random
    sample of them (sample_size of `rows`, `most` at most) into segment `into`, fresh rows
    with their cells among `cells` (those of segment `into`; none: written without a cell):
    the build's graph never holds them, searches find them as they find any fresh row until
    they are folded in, and the build's check searches for them as for a new picture. How
    many; none below HOLD_OUT_FROM_ROWS rows, or when `most` is 0 (no recall check)."""
    if rows < HOLD_OUT_FROM_ROWS or not most:
        return 0
    size = sample_size(rows, most)
    picked = io.BytesIO()
    # Pages drawn at random (not the whole table read), then rows among them: three times the
    # rows wanted, lest the pages come short. xmin: the row version read (see below).
    cur.copy_expert(
        sql.SQL(
            "COPY (SELECT id, xmin::text::bigint, embedding FROM {table} WHERE id IN (SELECT id "
            "FROM {table} TABLESAMPLE SYSTEM ({share}) WHERE segment < {into} ORDER BY random() "
            "LIMIT {size})) TO STDOUT (FORMAT binary)"
        ).format(
            table=collection.table,
            share=sql.Literal(min(100.0, 300.0 * size / rows)),
            into=sql.Literal(into),
            size=sql.Literal(size),
        ),
        picked,
    )
    ids, versions, vectors = decode_binary_copy_versioned_vectors(picked.getvalue(), collection.dim)
    assigned = cells.assign(vectors) if cells is not None else np.full(len(ids), NO_CELL)
    # Only the versions read move: a row rewritten meanwhile has its writer's segment and cell.
    # Rows being written now are skipped, never waited for (nor deadlocked with).
    cur.execute(
        sql.SQL(
            "UPDATE {table} AS t SET segment = %(into)s, cell = a.cell FROM unnest("
            "%(ids)s::bigint[], %(versions)s::bigint[], %(cells)s::integer[]) AS a(id, version, "
            "cell) WHERE t.id = a.id AND t.xmin::text::bigint = a.version AND t.segment < "
            "%(into)s AND t.id IN (SELECT id FROM {table} WHERE id = ANY(%(ids)s::bigint[]) "
            "FOR UPDATE SKIP LOCKED)"
        ).format(table=collection.table),
        {
            "into": into,
            "ids": ids.tolist(),
            "versions": versions.tolist(),
            "cells": [int(cell) for cell in assigned],
        },
    )
    held: int = cur.rowcount
    return held


def draw_sample(
    pool: ConnectionPool,
    collection: Collection,
    size: int,
    search: Search,
    *,
    seed: int = 0,
    fresh_source: str = HELD_OUT_ROWS,
    graph_cells: Cells | None = None,
) -> RecallSample | None:
    """Up to `size` held-out queries (sample_size of the rows) and their exact neighbours, by
    numpy over a binary COPY of every stored vector: the fresh rows, where at least
    SMALLEST_SAMPLE of them are no graph's (see hold_out), else stored vectors drawn at random
    and moved (see held_out). None for a collection too small to measure. With the
    collection's `graph_cells`, the sample also knows which graphs hold the neighbours."""
    with pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
        # Reading every stored vector grows with the collection (a million 1000-d rows took
        # over the 30 s request limit): off the request path, like an index build, it runs
        # without the statement timeout.
        cur.execute("SET LOCAL statement_timeout = 0")
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(collection.table))
        rows: int = cur.fetchone()[0]
        if rows <= RECALL_AT:
            return None
        size = sample_size(rows, size)
        started = time.monotonic()
        own_ids, queries = _fresh_rows(cur, collection, size)
        source = fresh_source
        if len(own_ids) < SMALLEST_SAMPLE:
            share = min(100.0, 100.0 * 3 * size / rows)
            ids, stored = copy_sample(
                cur, collection.table, collection.dim, share=share, size=size, seed=seed
            )
            queries = held_out(stored, ids, collection.metric, search, seed)
            own_ids, source = np.full(len(queries), NO_ID), MOVED_VECTORS
        placed = time.monotonic()
        exact = ExactNeighbours(queries, own_ids, collection.metric, RECALL_AT, collection.dim)
        try:
            cur.copy_expert(
                sql.SQL("COPY (SELECT id, embedding FROM {}) TO STDOUT (FORMAT binary)").format(
                    collection.table
                ),
                exact,
            )
            true_distances = exact.finish()
        finally:
            exact.close()
        places = None
        if graph_cells is not None:
            places = _places_of(cur, collection, graph_cells, queries, exact.neighbour_ids)
    sample = RecallSample(queries, true_distances, own_ids, source, *(places or ()))
    logger.info(
        "%s: %s drawn in %.1f s, their exact neighbours among %d rows in %.1f s",
        *(collection.name, sample.described, placed - started, rows, time.monotonic() - placed),
    )
    return sample


def _places_of(
    cur: Any, collection: Collection, cells: Cells, queries: np.ndarray, neighbours: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RecallSample's neighbour_walks, neighbour_ids and neighbour_graphs of `queries`, whose
    true neighbours are rows `neighbours` (-1: none), read from the rows' own cells (a row
    written without one is in no graph)."""
    wanted = np.unique(neighbours[neighbours >= 0])
    cur.execute(
        sql.SQL("SELECT id, cell FROM {} WHERE id = ANY(%s)").format(collection.table),
        (wanted.tolist(),),
    )
    cell_of = dict(cur.fetchall())
    ranks = cells.ranks(queries)
    per_graph = max(cells.fine_per_cell, 1)
    walks = np.full(neighbours.shape, -1, dtype=np.int64)  # a row gone since: unknown
    graphs = np.full(neighbours.shape, -1, dtype=np.int64)
    for (query, place), row in np.ndenumerate(neighbours):
        cell = cell_of.get(int(row))
        if cell == NO_CELL:
            walks[query, place] = 0
        elif cell is not None:
            graphs[query, place] = cell // per_graph
            walks[query, place] = ranks[query, graphs[query, place]] + 1
    return walks, np.asarray(neighbours, dtype=np.int64), graphs


def _fresh_rows(cur: Any, collection: Collection, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of up to `size` of the collection's fresh rows, drawn at random."""
    picked = io.BytesIO()
    cur.copy_expert(
        sql.SQL(
            "COPY (SELECT id, embedding FROM {table} WHERE id IN (SELECT id FROM {table} "
            "WHERE {fresh} ORDER BY random() LIMIT {size})) TO STDOUT (FORMAT binary)"
        ).format(table=collection.table, fresh=collection.fresh, size=sql.Literal(size)),
        picked,
    )
    return decode_binary_copy_ids_vectors(picked.getvalue(), collection.dim)


@dataclass(frozen=True)
class ShadowQuery:
    collection: Collection
    vector: np.ndarray
    top_k: int
    filter: Filter
    result: SearchResult


class ShadowMonitor:
    """Re-runs a share of live approximate searches exactly, off the request path, and keeps
    each collection's recall over its last `window` shadow queries.

    Never slows a search: a search is shadowed only while the monitor is idle, and the exact
    scans may take at most `budget` of one core's time (an exact scan of a million 1000-d rows
    takes most of a second; 1% of 100 searches a second would otherwise take a whole core)."""

    def __init__(
        self,
        exact_search: Callable[[ShadowQuery], list[Hit]],
        *,
        share: float,
        budget: float = 0.05,
        window: int = 200,
        queue_size: int = 4,
    ) -> None:
        self.share = share
        self.budget = budget
        self._resting_until = 0.0
        self.window = window
        self._exact_search = exact_search
        self._queue: queue.Queue[ShadowQuery | None] = queue.Queue(maxsize=queue_size)
        self._recalls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._unfinished = 0
        self.listeners: list[Callable[[str, float, float], None]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.share > 0:
            self._thread = threading.Thread(target=self._run, name="shadow-queries", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def offer(self, shadow: ShadowQuery) -> None:
        if self._thread is None or shadow.result.exact or random.random() >= self.share:
            return
        if time.monotonic() < self._resting_until:
            return
        with self._lock:
            self._unfinished += 1
        try:
            self._queue.put_nowait(shadow)
        except queue.Full:
            self._done()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every offered query has been re-run (tests)."""
        with self._settled:
            return self._settled.wait_for(lambda: self._unfinished == 0, timeout_s)

    def _done(self) -> None:
        with self._settled:
            self._unfinished -= 1
            self._settled.notify_all()

    def recall(self, collection: str) -> float | None:
        with self._lock:
            window = self._recalls.get(collection)
            return float(np.mean(window)) if window else None

    def _run(self) -> None:
        while (shadow := self._queue.get()) is not None:
            try:
                self._shadow(shadow)
            except Exception:  # a shadow query must never take the searcher down
                logger.warning("shadow query on %s failed", shadow.collection.name, exc_info=True)
            finally:
                self._done()

    def _shadow(self, shadow: ShadowQuery) -> None:
        started = time.monotonic()
        exact = self._exact_search(shadow)
        took = time.monotonic() - started
        self._resting_until = started + took / self.budget if self.budget > 0 else 0.0
        found = [h.distance for h in shadow.result.hits][:RECALL_AT]
        recall = recall_by_distance(found, [h.distance for h in exact][:RECALL_AT])
        name = shadow.collection.name
        with self._lock:
            window = self._recalls.setdefault(name, deque(maxlen=self.window))
            window.append(recall)
            mean = float(np.mean(window))
        for listener in self.listeners:
            listener(name, recall, mean)
