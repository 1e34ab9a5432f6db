"""Exact nearest distances of a few queries over every stored vector, from the stream of a binary
COPY: the truth the upkeep's recall check measures searches against.

Each chunk of rows is screened in float32 (one matrix product, half the time of float64 on
this machine's two cores), and only the rows the screen cannot rule out are measured again in
float64. Ruling out is safe, not a guess: a float32 dot product over `dim` terms is off by at
most dim * 2^-24 of the product of the norms, so a row whose screened distance lies further than
that bound past a query's k-th best can not be among its k nearest.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from searcher.catalogue import Metric
from searcher.pgvector_io import COPY_HEADER_BYTES, decode_id_vector_rows, id_vector_row_bytes

# The rounding of float32, and a safety factor over the proven bound (conversions, norms).
_UNIT_ROUNDOFF = 2.0**-24
_MARGIN = 4.0


class ExactNeighbours:
    """Exact top-k distances for a few queries against every stored vector, fed by the raw
    stream of `COPY (SELECT id, embedding ...) TO STDOUT (FORMAT binary)`: rows are parsed in
    chunks as they arrive, so memory stays bounded whatever the collection's size."""

    # Distances screened at once (queries x rows, float32): 64 MB.
    CHUNK_DISTANCES = 16_000_000

    def __init__(
        self, queries: np.ndarray, query_ids: np.ndarray, metric: Metric, k: int, dim: int
    ) -> None:
        self.queries = queries.astype(np.float64)
        self.query_ids = query_ids
        self.metric = metric
        self.k = k
        self.dim = dim
        self.row_bytes = id_vector_row_bytes(dim)
        self.chunk_rows = max(1000, self.CHUNK_DISTANCES // max(len(queries), 1))
        self.best = np.full((len(queries), k), np.inf)
        self.best_ids = np.full((len(queries), k), -1, dtype=np.int64)
        self._buffer = bytearray()
        self._header_left = COPY_HEADER_BYTES
        # Chunks are measured on a thread of their own while the COPY goes on reading (numpy's
        # products and psycopg2's reads both let go of the GIL): PostgreSQL producing the rows
        # and numpy measuring them then take one core each.
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self._failure: BaseException | None = None
        self._worker = threading.Thread(target=self._measure, name="exact-neighbours", daemon=True)
        self._worker.start()

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._buffer += data
        if self._header_left:
            cut = min(self._header_left, len(self._buffer))
            del self._buffer[:cut]
            self._header_left -= cut
        whole = len(self._buffer) // self.row_bytes
        if whole >= self.chunk_rows:
            self._hand_over(whole)

    def finish(self) -> np.ndarray:
        """The k smallest distances per query (ascending), leaving out each query's own row;
        fewer where the collection holds fewer than k other rows. Their rows' ids are then
        `neighbour_ids`."""
        self._hand_over(len(self._buffer) // self.row_bytes)
        self._chunks.put(None)
        self._worker.join()
        if self._failure is not None:
            raise self._failure
        found = int(np.isfinite(self.best).any(axis=0).sum())
        self.best, self.best_ids = self.best[:, :found], self.best_ids[:, :found]
        return self.best

    @property
    def neighbour_ids(self) -> np.ndarray:
        """The ids of the rows at the distances finish() returned (-1 where a query has fewer)."""
        return self.best_ids

    def close(self) -> None:
        """Stop the measuring thread of a COPY that failed before finish()."""
        if self._worker.is_alive():
            self._failure = self._failure or RuntimeError("exact neighbours abandoned")
            self._chunks.put(None)
            self._worker.join()

    def _hand_over(self, rows: int) -> None:
        if rows:
            size = rows * self.row_bytes
            self._chunks.put(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _measure(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._failure is not None:
                continue  # drain, so that the reader never blocks on a full queue
            try:
                self._take(*decode_id_vector_rows(chunk, self.dim))
            except BaseException as exc:  # handed to the reader, which raises it
                self._failure = exc

    def _take(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        rows = len(ids)
        if rows == 0 or len(self.queries) == 0:
            return
        screened, slack = _screen(self.queries, vectors, self.metric)
        screened[ids[None, :] == self.query_ids[:, None]] = np.inf  # leave self out
        limit = _in_screen_units(self.best[:, -1], self.metric)
        if not np.isfinite(limit).all():  # fewer than k rows met so far: the chunk's k-th
            kth = (
                np.partition(screened, self.k - 1, axis=1)[:, self.k - 1]
                if rows > self.k
                else np.full(len(limit), np.inf)
            )
            limit = np.minimum(limit, kth + slack)
        query, row = np.nonzero(screened <= (limit + slack)[:, None])
        others = ids[row] != self.query_ids[query]  # inf <= an unbounded limit, too
        query, row = query[others], row[others]
        exact = _pair_distances(self.queries[query], vectors[row].astype(np.float64), self.metric)
        self.best, self.best_ids = _merged(self.best, self.best_ids, query, exact, ids[row])


def _screen(
    queries: np.ndarray, vectors: np.ndarray, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, rows) float32 distances in screen units (squared for L2), and per query how
    far from the exact value (in the same units) any of them may be."""
    bound = _MARGIN * vectors.shape[1] * _UNIT_ROUNDOFF
    if metric is Metric.L2:
        # Distances do not change when everything moves, and float32 keeps the ones near the
        # chunk's centre apart: data far from the origin would round to one distance.
        # One centre, as float32, for rows and queries: the rows move by it exactly.
        centre = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
        rows = vectors - centre
        moved = (queries - centre.astype(np.float64)).astype(np.float32)
        squares = np.einsum("ij,ij->i", rows, rows)
        own = np.einsum("ij,ij->i", moved, moved)
        screened = squares[None, :] - 2 * (moved @ rows.T) + own[:, None]
        return screened, bound * (own.astype(np.float64) + float(squares.max()))
    products = queries.astype(np.float32) @ vectors.T
    if metric is Metric.COSINE:
        norms = (
            np.linalg.norm(vectors, axis=1)[None, :]
            * np.linalg.norm(queries.astype(np.float32), axis=1)[:, None]
        )
        return 1.0 - products / np.maximum(norms, 1e-30), np.full(len(queries), 2 * bound)
    longest = float(np.linalg.norm(vectors, axis=1).max())
    return -products, bound * np.linalg.norm(queries, axis=1) * longest


def _in_screen_units(distances: np.ndarray, metric: Metric) -> np.ndarray:
    return np.square(distances) if metric is Metric.L2 else distances


def _pair_distances(queries: np.ndarray, rows: np.ndarray, metric: Metric) -> np.ndarray:
    """The float64 distance of each query to the row beside it."""
    products = np.einsum("ij,ij->i", queries, rows)
    if metric is Metric.INNER_PRODUCT:
        return -products
    if metric is Metric.COSINE:
        norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(queries, axis=1)
        return 1.0 - products / np.maximum(norms, 1e-30)
    return np.linalg.norm(rows - queries, axis=1)


def _merged(
    best: np.ndarray,
    best_ids: np.ndarray,
    query: np.ndarray,
    distances: np.ndarray,
    ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """`best` (queries, k; ascending) and their rows' `best_ids`, with each query's new
    distances (of rows `ids`) taken in."""
    if len(query) == 0:
        return best, best_ids
    counts = np.bincount(query, minlength=len(best))
    starts = np.cumsum(counts) - counts
    # np.nonzero lists the pairs query by query: each one's place among its query's.
    places = np.arange(len(query)) - np.repeat(starts, counts)
    new = np.full((len(best), int(counts.max())), np.inf)
    new[query, places] = distances
    new_ids = np.full(new.shape, -1, dtype=np.int64)
    new_ids[query, places] = ids
    merged = np.concatenate([best, new], axis=1)
    merged_ids = np.concatenate([best_ids, new_ids], axis=1)
    k = best.shape[1]
    kept = np.argpartition(merged, k - 1, axis=1)[:, :k]
    kept = np.take_along_axis(
        kept, np.argsort(np.take_along_axis(merged, kept, axis=1), axis=1, kind="stable"), axis=1
    )
    return np.take_along_axis(merged, kept, axis=1), np.take_along_axis(merged_ids, kept, axis=1)
