"""Near-duplicate groups inside a collection: each item's neighbours within a distance, found in
the database a batch of items at a time (several batches at once, each on its own connection),
then grouped so that every member is within the distance of every other (searcher.grouping).

Two plans, chosen like a search's. With the index: each item's `candidates` nearest by the
index (lateral join, one statement per batch), kept when their exact distance is within the
limit; an item whose candidates are all within it may have more, and an item the index's walk
did not find itself did not reach its neighbourhood, so both are asked again by an exact range
scan, which keeps the groups complete. Without the index (no index yet, a filter
matching few rows, or `exact`): an exact range scan per item over the matching rows.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from imgsearch.errors import InvalidArgument
from imgsearch.records import DuplicateGroup, DuplicateMember
from searcher.catalogue import Collection, Metric
from searcher.grouping import Neighbours
from searcher.kinds import spec
from searcher.pgvector_io import as_array
from searcher.pool import BULK_WORKERS, ConnectionPool
from searcher.queries import Effort, Filter, Queries, graphs_walked
from searcher.validation import MAX_EF_SEARCH

logger = logging.getLogger(__name__)

OTHER = sql.SQL("a.embedding")  # the vector of the item whose neighbours are sought


@dataclass(frozen=True)
class Progress:
    scanned: int
    total: int


@dataclass
class _Scan:
    """One duplicate search: what it compares, how, and what it has found so far."""

    collection: Collection
    filter: Filter
    max_distance: float
    use_index: bool
    candidates: int  # index candidates fetched per item
    effort: Effort
    total: int
    scanned: int = 0
    neighbours: Neighbours = field(default_factory=Neighbours)
    saturated: list[int] = field(default_factory=list)
    unreached: int = 0


@dataclass(frozen=True)
class _Batch:
    """What one batch of items found: its pairs, and the items that may have more."""

    items: int
    pairs: list[tuple[int, int, float]]  # (item, neighbour, distance)
    saturated: list[int]
    unreached: int  # items the index did not find themselves: compared exactly


class DuplicateFinder:
    def __init__(
        self,
        pool: ConnectionPool,
        queries: Queries,
        *,
        batch_rows: int = 256,
        neighbours: int = 32,
        workers: int = BULK_WORKERS,
    ) -> None:
        self.pool = pool
        # Plans as a search does: the same exact-filter size and index settings.
        self.queries = queries
        # Items whose neighbours are found per statement: short enough to stay well under the
        # statement timeout and to notice a cancellation within a second or two.
        self.batch_rows = batch_rows
        # Index candidates fetched per item, at least.
        self.neighbours = neighbours
        # Batches searched at once, each on its own connection (one backend's core).
        self.workers = workers

    def find(
        self,
        collection: Collection,
        has_index: bool,
        max_distance: float,
        *,
        filter: Filter = Filter(),
        effort: Effort,
        limit: int = 0,
        exact: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[Progress | DuplicateGroup]:
        """Progress after every batch of items scanned, then the groups (two or more items,
        each within `max_distance` of every other), largest and closest first; at most `limit`
        groups when it is not 0. Stops quietly as soon as `cancelled()` is true."""
        if not math.isfinite(max_distance) or max_distance == 0:
            raise InvalidArgument(
                f"max_distance must be a finite non-zero distance under the collection's metric "
                f"({collection.metric.value}), got {max_distance}"
            )
        total = self._count(collection, filter)
        scan = _Scan(
            collection,
            filter,
            max_distance,
            use_index=has_index
            and not exact
            and (not filter or total > self.queries.exact_filter_rows),
            candidates=max(self.neighbours, effort.candidates),
            effort=effort,
            total=total,
        )
        finished = False
        try:
            yield from self._scan(scan, cancelled)
            if not cancelled() and self._rescan_saturated(scan, cancelled):
                groups = scan.neighbours.groups()
                groups = groups[:limit] if limit else groups
                for first in range(0, len(groups), self.batch_rows):
                    if cancelled():
                        return
                    yield from self._described(collection, groups[first : first + self.batch_rows])
                finished = True
        finally:
            # Also reached when the caller stops reading (a cancelled RPC closes the generator).
            if not finished:
                logger.info(
                    "duplicate search in %s cancelled after %d of %d items",
                    collection.name,
                    scan.scanned,
                    total,
                )

    def _scan(self, scan: _Scan, cancelled: Callable[[], bool]) -> Iterator[Progress]:
        """Every matching item's neighbours within the distance, a batch at a time on up to
        `workers` connections at once, added to scan.neighbours in the batches' order; items that
        may have more neighbours than the index gave go to scan.saturated."""
        workers = concurrent.futures.ThreadPoolExecutor(self.workers, "duplicates")
        pending: deque[concurrent.futures.Future[_Batch]] = deque()
        start: int | None = -(2**63)
        try:
            while not cancelled():
                # Keep every worker busy and the next batch ready: ids are cheap to page through.
                while start is not None and len(pending) < 2 * self.workers:
                    items = self._batch(scan.collection, scan.filter, start)
                    last = items[-1][0] if items else None
                    start = last + 1 if last is not None and last < 2**63 - 1 else None
                    if items:
                        pending.append(workers.submit(self._pairs, scan, items))
                if not pending:
                    break
                batch = pending.popleft().result()
                for a, b, distance in batch.pairs:
                    scan.neighbours.add(a, b, distance)
                scan.saturated += batch.saturated
                scan.unreached += batch.unreached
                scan.scanned += batch.items
                yield Progress(scanned=scan.scanned, total=max(scan.total, scan.scanned))
        finally:
            # Also on a cancel: batches not started are dropped, running ones (a second or
            # two each) end before their connections go back to the pool.
            workers.shutdown(wait=True, cancel_futures=True)
        if scan.unreached:
            logger.info(
                "duplicate search in %s: the index did not reach %d of %d items at ef_search "
                "%d; compared exactly",
                scan.collection.name,
                scan.unreached,
                scan.scanned,
                min(max(scan.effort.ef_search, scan.candidates), MAX_EF_SEARCH),
            )

    def _pairs(self, scan: _Scan, items: Sequence[tuple[int, bool]]) -> _Batch:
        """One batch of items' pairs within the distance, and the items that may have more."""
        ids = [item for item, _ in items]
        if not scan.use_index:
            pairs = self._pairs_exact(scan.collection, scan.filter, ids, scan.max_distance)
            return _Batch(len(ids), pairs, [], 0)
        pairs, reached = self._pairs_by_index(scan, ids)
        found: dict[int, int] = {}
        for a, _, _ in pairs:
            found[a] = found.get(a, 0) + 1
        # All candidates within the distance (the item itself among them): there may be more
        # than the index was asked for.
        saturated = [i for i, n in found.items() if n >= scan.candidates - 1]
        # An indexed item whose walk of the graph did not come to the item itself did not reach
        # its neighbourhood (HNSW leaves some items out of reach at a given effort), so its
        # copies were missed too: it is compared exactly with the indexed rows. Under inner
        # product an item need not be its own nearest, so this cannot be told there.
        unreached = []
        if scan.collection.metric is not Metric.INNER_PRODUCT:
            unreached = [item for item, indexed in items if indexed and item not in reached]
        if unreached:
            pairs += self._pairs_exact(
                scan.collection,
                scan.filter,
                unreached,
                scan.max_distance,
                scan.collection.indexed,
            )
        # The rows not in the index yet: compared exactly.
        pairs += self._pairs_exact(
            scan.collection, scan.filter, ids, scan.max_distance, scan.collection.fresh
        )
        return _Batch(len(ids), pairs, saturated, len(unreached))

    def _rescan_saturated(self, scan: _Scan, cancelled: Callable[[], bool]) -> bool:
        """Join the saturated items' neighbours by an exact range scan; False if cancelled."""
        for first in range(0, len(scan.saturated), self.batch_rows):
            if cancelled():
                return False
            batch = scan.saturated[first : first + self.batch_rows]
            for a, b, distance in self._pairs_exact(
                scan.collection, scan.filter, batch, scan.max_distance
            ):
                scan.neighbours.add(a, b, distance)
        if scan.saturated:
            logger.info(
                "duplicate search in %s: %d items had more than %d neighbours within %g; "
                "scanned exactly",
                scan.collection.name,
                len(scan.saturated),
                scan.candidates - 1,
                scan.max_distance,
            )
        return True

    def _count(self, collection: Collection, filter: Filter) -> int:
        where, params = filter.where()
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {} {}").format(collection.table, where), params
            )
            count: int = cur.fetchone()[0]
        return count

    def _batch(self, collection: Collection, filter: Filter, start: int) -> list[tuple[int, bool]]:
        """The next matching ids from `start` on, ascending (keyset pagination), each with
        whether it is in the index."""
        where, params = filter.where(sql.SQL("id >= %(start)s"))
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id, {} FROM {} {} ORDER BY id LIMIT %(batch)s").format(
                    collection.indexed, collection.table, where
                ),
                {**params, "start": start, "batch": self.batch_rows},
            )
            return [(row[0], row[1]) for row in cur.fetchall()]

    def _pairs_by_index(
        self, scan: _Scan, ids: Sequence[int]
    ) -> tuple[list[tuple[int, int, float]], set[int]]:
        """Each item's neighbours among the indexed rows, by the index; and the items that
        found themselves among their candidates."""
        collection, effort, candidates = scan.collection, scan.effort, scan.candidates
        # Candidates are kept by exact distance, so they need not come in order (re-ranked).
        settings = self.queries.index_settings(
            min(max(effort.ef_search, candidates), MAX_EF_SEARCH),
            filtered=bool(scan.filter),
            reranked=True,
        )
        rows: list[tuple[int, int, float]] = []
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            for graph, walking in self._walks(cur, collection, ids).items():
                where, params = scan.filter.where(collection.in_graph(graph))
                # Each item's candidates in the index's order, then kept by exact distance.
                query = sql.SQL(
                    "SELECT a.id, n.id, n.distance FROM {table} AS a CROSS JOIN LATERAL ("
                    "SELECT c.id, c.embedding {op} a.embedding AS distance FROM "
                    "(SELECT id, embedding FROM {table} {where} ORDER BY {order} "
                    "LIMIT %(candidates)s) AS c) AS n WHERE a.id = ANY(%(ids)s) "
                    "AND (n.id = a.id OR n.distance <= %(max_distance)s)"
                ).format(
                    table=collection.table,
                    op=sql.SQL(collection.metric.operator),
                    where=where,
                    order=spec(collection.kind).candidate_order(collection, OTHER),
                )
                params = {
                    **params,
                    "ids": walking,
                    "candidates": candidates,
                    "max_distance": scan.max_distance,
                }
                cur.execute(sql.SQL("; ").join([*settings, query]), params)
                rows += cur.fetchall()
        reached = {a for a, n, _ in rows if a == n}
        return [(a, n, d) for a, n, d in rows if a != n and d <= scan.max_distance], reached

    def _walks(self, cur: Any, collection: Collection, ids: Sequence[int]) -> dict[Any, list[int]]:
        """The items that walk each graph: every item the one graph; with graphs by cell, each
        item the graphs of its nearest cells, as a search for its vector would."""
        if not collection.graph_cells:
            return {None: list(ids)}
        cur.execute(
            sql.SQL("SELECT id, embedding FROM {} WHERE id = ANY(%s)").format(collection.table),
            (list(ids),),
        )
        walks: dict[Any, list[int]] = {}
        cells = self.queries.cells.of(collection)
        for item, vector in cur.fetchall():
            for graph in graphs_walked(collection, cells, as_array(vector)):
                walks.setdefault(graph, []).append(item)
        return walks

    def _pairs_exact(
        self,
        collection: Collection,
        filter: Filter,
        ids: Sequence[int],
        max_distance: float,
        *among: sql.Composable,
    ) -> list[tuple[int, int, float]]:
        """Each item's neighbours by exact distance, among every row or those `among` says."""
        distance = sql.SQL("embedding {} a.embedding").format(sql.SQL(collection.metric.operator))
        where, params = filter.where(*among, sql.SQL("{} <= %(max_distance)s").format(distance))
        query = sql.SQL(
            "SET LOCAL enable_indexscan = off; "
            "SELECT a.id, n.id, n.distance FROM {table} AS a CROSS JOIN LATERAL "
            "(SELECT id, {distance} AS distance FROM {table} {where}) AS n "
            "WHERE a.id = ANY(%(ids)s) AND n.id <> a.id"
        ).format(table=collection.table, distance=distance, where=where)
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(query, {**params, "ids": list(ids), "max_distance": max_distance})
            return [(row[0], row[1], row[2]) for row in cur.fetchall()]

    def _described(
        self, collection: Collection, components: Sequence[list[int]]
    ) -> Iterator[DuplicateGroup]:
        """The groups with each member's label, uri and distance to the group's first; members
        deleted meanwhile are left out (and a group left with one member with them)."""
        firsts = [ids[0] for ids in components for _ in ids]
        members = [member for ids in components for member in ids]
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT p.first, m.id, m.label, m.uri, m.embedding {} f.embedding "
                    "FROM unnest(%s::bigint[], %s::bigint[]) AS p(first, member) "
                    "JOIN {} AS f ON f.id = p.first JOIN {} AS m ON m.id = p.member"
                ).format(sql.SQL(collection.metric.operator), collection.table, collection.table),
                (firsts, members),
            )
            rows: dict[int, list[Any]] = {}
            for first, *member in cur.fetchall():
                rows.setdefault(first, []).append(member)
        for ids in components:
            found = sorted(rows.get(ids[0], []), key=lambda m: (m[0] != ids[0], m[3], m[0]))
            if len(found) > 1:
                yield DuplicateGroup(
                    [DuplicateMember(m[0], m[1], m[2], float(m[3])) for m in found]
                )
