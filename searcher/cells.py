"""Coarse cells for the fresh rows: an interim IVF (Milvus's index for its growing segments).

Rows added to an indexed collection stay off its graph until folded in, and a search scans them
exactly. That scan grows with them (~1 ms per 1,000 rows of 1000-d), so each fresh row also
carries a cell: one of a few hundred, by its direction from the centre of the collection's rows
when its index was built (see Cells). A search scans only the fresh rows of the cells nearest to
its query: as many as held 99% of the true neighbours when the cells were fitted (measured on
the sample), so it misses a few at cell borders, as an index walk does.

A collection indexed as graphs by cell (searcher.cell_graphs) sorts its rows by the graphs'
own coarse cells, and within them by finer cells fitted as one graph's would be: a row's cell
is its graph × fine cells + its fine cell, and a search scans the fresh rows of the graphs it
walks in its query's nearest fine cells (before, whole graph cells: at 200k rows in 16, a
search ran 1.4-1.6x slower while 10k rows were fresh).

One set of centroids serves the rows of one segment: the one writers fill after the build that
fitted it. Every other fresh segment (rows written before, by a writer whose catalogue view was
older) is scanned whole, so a writer and a searcher that disagree on the current set lose
nothing: a row's cell is only ever read against the set it was assigned with.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from searcher.catalogue import Collection, Metric
from searcher.pgvector_io import copy_sample
from searcher.pool import ConnectionPool
from searcher.schema import CATALOG_SCHEMA

logger = logging.getLogger(__name__)

# Below this many rows a full scan of the fresh ones (at most a quarter of the indexed rows
# before a build takes them in) costs under ~0.3 ms: no cells.
MIN_ROWS = 1024
MAX_CELLS = 256
SAMPLE_ROWS = 64 * MAX_CELLS  # k-means on more rows moves the centroids little
ITERATIONS = 10
# A search scans the fresh rows of as many of its nearest cells as hold this share of its true
# neighbours, measured on the sample when the cells are fitted (fresh rows are at most a fifth
# of a collection, so they cost the whole search under 0.2% of its recall), and at least 4.
NEIGHBOURS_IN_PROBES = 0.99
# Graphs by cell (searcher.cell_graphs) are walked in as many of a query's nearest cells as hold
# this share of its neighbours, and at least 2: a row's own neighbours sit in its cell more
# often than a new query's do. At 1M clustered rows in 80 cells, one walk held 99.3% of the
# held-out queries' true neighbours and the search found 0.9765 of them, where the upkeep's
# sample (stored rows moved halfway to a neighbour) measured 0.992 (bench/RESULTS.md).
NEIGHBOURS_IN_WALKS = 0.999
MIN_WALKS = 2
MIN_PROBES = 4
CALIBRATION_QUERIES = 256
# Table fresh_cells' columns of the finer cells of graphs by cell (NULL and 0 without).
_FINE_COLUMNS = "fine_centroids, fine_probes"
CALIBRATION_K = 10


def cell_count(rows: int) -> int:
    """How many cells for a collection of `rows`: ~sqrt(rows) (IVF's rule), 16 to 256; 0 (no
    cells) below MIN_ROWS."""
    if rows < MIN_ROWS:
        return 0
    return max(16, min(MAX_CELLS, math.isqrt(rows)))


@dataclass(frozen=True)
class Cells:
    """A fitted set of cells and the rule that assigns a vector its cell: the centroid nearest
    in direction, seen from the sample's centre (cosine collections: from the centre of the
    unit vectors). Plain nearest centroids make uneven cells: the few centroids near the data's
    middle draw most rows, and the queries with them (5 cells of 256 held 9% of the rows of the
    benchmarks' clustered data, 52% on a 1000-component mixture; by direction, 1.7%)."""

    centroids: np.ndarray  # float32 (cells, dim), unit directions from the centre
    centre: np.ndarray  # float32 (dim,)
    metric: Metric  # the collection's: cosine compares unit vectors
    probes: int = MIN_PROBES  # how many of its nearest cells a search scans
    # Graphs by cell: finer cells (fitted from the same centre) that sort each graph's rows,
    # so that a search scans the fresh rows near its query in the graphs it walks, not all of
    # theirs. A row's cell is then its coarse cell × len(fine.centroids) + its fine cell.
    fine: Cells | None = None

    @classmethod
    def stored(
        cls,
        centre: bytes,
        centroids: bytes,
        dim: int,
        metric: Metric,
        probes: int = MIN_PROBES,
        fine: tuple[bytes, int] | None = None,
    ) -> Cells:
        """Cells as table fresh_cells stores them (little-endian float32); `fine`: the finer
        cells' centroids and probes, if any."""
        origin = np.frombuffer(centre, dtype="<f4").astype(np.float32)

        def directions(stored: bytes) -> np.ndarray:
            return np.frombuffer(stored, dtype="<f4").reshape(-1, dim).astype(np.float32)

        finer = None if fine is None else cls(directions(fine[0]), origin, metric, fine[1])
        return cls(directions(centroids), origin, metric, probes, finer)

    @property
    def fine_per_cell(self) -> int:
        """How many finer cells each cell's rows are sorted into (0: none)."""
        return 0 if self.fine is None else len(self.fine.centroids)

    def directions(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as seen from the centre."""
        rows = np.asarray(np.atleast_2d(vectors), dtype=np.float32)
        if self.metric is Metric.COSINE:
            rows = _unit(rows)
        return rows - self.centre

    def _scores(self, vectors: np.ndarray) -> np.ndarray:
        """Lower is nearer, one column per centroid."""
        return -(self.directions(vectors) @ self.centroids.T)

    def ranks(self, vectors: np.ndarray) -> np.ndarray:
        """(vectors, cells): each cell's rank among each vector's cells, nearest first (0: the
        vector's own cell)."""
        order = np.argsort(self._scores(vectors), axis=1, kind="stable")
        rank_of_cell = np.empty_like(order)
        np.put_along_axis(rank_of_cell, order, np.arange(order.shape[1])[None, :], axis=1)
        return rank_of_cell

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Each vector's cell (with finer cells: coarse × fine_per_cell + fine)."""
        coarse = np.asarray(self._scores(vectors).argmin(axis=1), dtype=np.int32)
        if self.fine is None:
            return coarse
        return coarse * np.int32(self.fine_per_cell) + self.fine.assign(vectors)

    def scanned(self, vector: np.ndarray, coarse: list[int]) -> list[int]:
        """The cells whose fresh rows a search for `vector` scans, given the coarse cells it
        takes (its nearest probes, or over graphs by cell the graphs it walks): those, or with
        finer cells each one's rows in the query's nearest fine cells."""
        if self.fine is None:
            return list(coarse)
        near = self.fine.nearest(vector)
        return [cell * self.fine_per_cell + fine for cell in coarse for fine in near]

    def nearest(self, vector: np.ndarray, count: int = 0) -> list[int]:
        """The cells a search for `vector` scans (`count` of them, else probes), its own cell
        first."""
        count = min(count or self.probes, len(self.centroids))
        scores = self._scores(vector)[0]
        nearest = np.argpartition(scores, count - 1)[:count]
        return [int(cell) for cell in nearest[np.argsort(scores[nearest], kind="stable")]]


def are_graph_cells(collection: Collection, cells: Cells) -> bool:
    """Whether `cells` are the collection's graphs' own (graphs by cell keep one set for good)."""
    return (
        bool(collection.graph_cells)
        and len(cells.centroids) == collection.graph_cells
        and cells.fine_per_cell == collection.fine_cells
    )


def fresh_probes(collection: Collection, cells: Cells) -> int:
    """How many cells' fresh rows a search scans: for graphs by cell, those of the graphs it
    walks, each in its query's nearest fine cells (Cells.scanned); else the cells' probes. At
    100k rows in 8 graph cells, scanning the fresh rows of 4 whole graph cells (half of them)
    doubled a search's p50 while 10k rows were added (bench/RESULTS.md, stop 38)."""
    coarse = max(collection.graph_probes, 1) if are_graph_cells(collection, cells) else cells.probes
    return coarse * (cells.fine.probes if cells.fine is not None else 1)


def cell_total(cells: Cells) -> int:
    """How many cells the fresh rows are sorted into."""
    return len(cells.centroids) * max(cells.fine_per_cell, 1)


def fit(sample: np.ndarray, metric: Metric, cells: int, *, seed: int = 0) -> Cells:
    """Cells by spherical k-means (Lloyd's, on directions from the centre) on `sample`."""
    rows = np.asarray(sample, dtype=np.float32)
    if metric is Metric.COSINE:
        rows = _unit(rows)
    centre = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    directions = _unit(rows - centre)
    rng = np.random.default_rng(seed)
    centroids = directions[rng.choice(len(rows), size=cells, replace=False)].copy()
    for _ in range(ITERATIONS):
        assigned = np.argmax(directions @ centroids.T, axis=1)
        order = np.argsort(assigned, kind="stable")
        members, starts = np.unique(assigned[order], return_index=True)
        sums = np.add.reduceat(directions[order].astype(np.float64), starts, axis=0)
        # A cell left empty keeps its centroid (a sampled row's direction): never NaN.
        centroids[members] = _unit(sums.astype(np.float32))
    return Cells(centroids, centre, metric)


def calibrated(
    cells: Cells,
    sample: np.ndarray,
    *,
    seed: int = 0,
    least: int = MIN_PROBES,
    share: float = NEIGHBOURS_IN_PROBES,
) -> Cells:
    """`cells` with the fewest probes (at least `least`) that reach `share` of the neighbours
    on `sample`: each of a few sampled rows searched for its CALIBRATION_K nearest among the
    others, and the rank of each neighbour's cell among the query's cells taken."""
    rows = np.asarray(sample, dtype=np.float32)
    count = min(CALIBRATION_QUERIES, len(rows) - 1)
    if count < 1:
        return cells
    picked = np.random.default_rng(seed).choice(len(rows), count, replace=False)
    distances = _distances(rows[picked], rows, cells.metric)
    distances[np.arange(count), picked] = np.inf  # a query is not its own neighbour
    k = min(CALIBRATION_K, len(rows) - 1)
    neighbours = np.argpartition(distances, k - 1, axis=1)[:, :k]
    # The rank of each neighbour's cell among its query's cells, nearest first.
    ranks = np.take_along_axis(cells.ranks(rows[picked]), cells.assign(rows)[neighbours], axis=1)
    needed = int(np.quantile(ranks, share, method="higher")) + 1
    return replace(cells, probes=min(len(cells.centroids), max(least, needed)))


def _distances(queries: np.ndarray, rows: np.ndarray, metric: Metric) -> np.ndarray:
    """(queries, rows) distances under the metric, up to a per-query constant for L2."""
    products = queries.astype(np.float64) @ rows.T.astype(np.float64)
    if metric is Metric.L2:
        return np.einsum("ij,ij->i", rows, rows).astype(np.float64)[None, :] - 2 * products
    if metric is Metric.COSINE:
        norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-30).astype(np.float64)
        return -products / norms[None, :]
    return -products


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-30), dtype=np.float32)


class CellStore:
    """Fits, stores and reads back each collection's centroids (table fresh_cells, one row per
    collection and segment); read ones are kept, since a stored set never changes."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        # The last set read for each collection (1 MB at 256 × 1000-d), by what identifies it.
        self._cache: dict[str, tuple[tuple[datetime | None, int], Cells | None]] = {}
        self._lock = threading.Lock()

    def fit_for(
        self, cur: Any, collection: Collection, segment: int, *, count: int = 0, rows: int = 0
    ) -> tuple[Cells, int] | None:
        """Fit centroids (`count` of them, else cell_count's) on a sample of the collection's
        rows and store them for `segment` (with the caller's cursor); None when the collection
        is too small for cells. `rows`: how many rows the cells are for, when the table does
        not hold them all yet (a bulk load's first rows: searcher.generation_cells). With them:
        how many of a query's nearest cells hold NEIGHBOURS_IN_WALKS of its neighbours (at
        least MIN_WALKS), for graphs by cell."""
        started = time.monotonic()
        with _untimed(cur):
            found = _row_estimate(cur, collection)
            rows = rows or found
            cells = count or cell_count(rows)
            if not cells:
                return None
            sample = _sample(cur, collection, found, seed=segment)
        if len(sample) < cells:
            return None
        fitted = calibrated(fit(sample, collection.metric, cells, seed=segment), sample)
        walks = calibrated(fitted, sample, least=MIN_WALKS, share=NEIGHBOURS_IN_WALKS).probes
        finer = min(cell_count(rows), len(sample))
        if count and finer:  # graphs by cell: their fresh rows sorted finer, as one graph's are
            fitted = replace(fitted, fine=calibrated(fit(sample, collection.metric, finer), sample))
        self._store(cur, collection, segment, fitted)
        logger.info(
            "%s: %d cells%s, a search scanning the fresh rows of %d (and walking %d cells' "
            "graphs, if built by cell), fitted on %d rows in %.1f s",
            collection.name,
            cell_total(fitted),
            f" ({cells} × {fitted.fine_per_cell} finer)" if fitted.fine is not None else "",
            fitted.probes if fitted.fine is None else walks * fitted.fine.probes,
            walks,
            len(sample),
            time.monotonic() - started,
        )
        return fitted, walks

    def walks(self, cur: Any, collection: Collection, cells: Cells, *, seed: int) -> int:
        """How many of a query's nearest `cells` hold NEIGHBOURS_IN_WALKS of its neighbours
        (at least MIN_WALKS), on a sample of the collection's rows as they are now."""
        with _untimed(cur):
            sample = _sample(cur, collection, _row_estimate(cur, collection), seed=seed)
        coarse = replace(cells, fine=None)  # walks are counted in graphs
        return calibrated(coarse, sample, least=MIN_WALKS, share=NEIGHBOURS_IN_WALKS).probes

    def carry_forward(self, cur: Any, collection: Collection, segment: int) -> bool:
        """Store the centroids of the collection's cells_segment for `segment` too (graphs by
        cell keep one set for good); False when there are none to carry."""
        cur.execute(
            f"INSERT INTO {CATALOG_SCHEMA}.fresh_cells (collection, segment, centre, centroids, "
            f"probes, {_FINE_COLUMNS}) SELECT collection, %s, centre, centroids, probes, "
            f"{_FINE_COLUMNS} FROM {CATALOG_SCHEMA}.fresh_cells WHERE collection = %s AND "
            "segment = %s ON CONFLICT (collection, segment) DO NOTHING",
            (segment, collection.name, collection.cells_segment),
        )
        cur.execute(
            f"SELECT EXISTS (SELECT 1 FROM {CATALOG_SCHEMA}.fresh_cells WHERE collection = %s "
            "AND segment = %s)",
            (collection.name, segment),
        )
        carried: bool = cur.fetchone()[0]
        return carried

    def _store(self, cur: Any, collection: Collection, segment: int, fitted: Cells) -> None:
        fine = fitted.fine
        cur.execute(
            f"INSERT INTO {CATALOG_SCHEMA}.fresh_cells (collection, segment, centre, centroids, "
            f"probes, {_FINE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT "
            "(collection, segment) DO UPDATE SET centre = EXCLUDED.centre, centroids = "
            "EXCLUDED.centroids, probes = EXCLUDED.probes, fine_centroids = "
            "EXCLUDED.fine_centroids, fine_probes = EXCLUDED.fine_probes",
            (
                collection.name,
                segment,
                fitted.centre.astype("<f4").tobytes(),
                fitted.centroids.astype("<f4").tobytes(),
                fitted.probes,
                None if fine is None else fine.centroids.astype("<f4").tobytes(),
                0 if fine is None else fine.probes,
            ),
        )

    def forget_before(self, cur: Any, collection: Collection, segment: int) -> None:
        """Drop the centroids of segments below `segment`: their rows are in the index. (A
        searcher whose view is older and no longer finds them scans those rows whole.)"""
        cur.execute(
            f"DELETE FROM {CATALOG_SCHEMA}.fresh_cells WHERE collection = %s AND segment < %s",
            (collection.name, segment),
        )

    def graphs_of(self, collection: Collection) -> Cells | None:
        """The cells of the collection's graphs by cell, or None (it has none)."""
        cells = self.of(collection) if collection.graph_cells else None
        return cells if cells is not None and are_graph_cells(collection, cells) else None

    def of(self, collection: Collection) -> Cells | None:
        """The cells of the collection's cells_segment, or None (none fitted, or gone)."""
        if not collection.cells_segment:
            return None
        key = (collection.created_at, collection.cells_segment)
        with self._lock:
            cached = self._cache.get(collection.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            with self.pool.connection() as conn, conn, conn.cursor() as cur:
                cur.execute(
                    f"SELECT centre, centroids, probes, {_FINE_COLUMNS} FROM "
                    f"{CATALOG_SCHEMA}.fresh_cells WHERE collection = %s AND segment = %s",
                    (collection.name, collection.cells_segment),
                )
                row = cur.fetchone()
        except pg_errors.InsufficientPrivilege:
            # A role granted before cells existed: searches stay exact, scanning every fresh row.
            logger.warning(
                "%s: this database role may not read %s.fresh_cells (see README, Database "
                "roles): every fresh row is scanned",
                collection.name,
                CATALOG_SCHEMA,
            )
            row = None
        cells = None
        if row is not None:
            fine = None if row[3] is None else (bytes(row[3]), row[4])
            cells = Cells.stored(
                bytes(row[0]), bytes(row[1]), collection.dim, collection.metric, row[2], fine
            )
        with self._lock:
            self._cache[collection.name] = (key, cells)
        return cells


@contextlib.contextmanager
def _untimed(cur: Any) -> Iterator[None]:
    """Reading a sample reads the whole table: off the request path, like the build itself,
    it runs without the statement time limit."""
    cur.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        cur.execute("RESET statement_timeout")


def _row_estimate(cur: Any, collection: Collection) -> int:
    """The planner's row count when the table has been analysed (a count of a million 4 KB
    rows reads gigabytes), else a count."""
    cur.execute(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (collection.qualified_table,)
    )
    row = cur.fetchone()
    if row is not None and row[0] is not None and row[0] > 0:
        return int(row[0])
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(collection.table))
    rows: int = cur.fetchone()[0]
    return rows


def _sample(cur: Any, collection: Collection, rows: int, *, seed: int) -> np.ndarray:
    share = min(100.0, 100.0 * 1.5 * SAMPLE_ROWS / max(rows, 1))
    _, vectors = copy_sample(
        cur, collection.table, collection.dim, share=share, size=SAMPLE_ROWS, seed=seed
    )
    return vectors
