"""Near-duplicate groups inside a collection: each item's neighbours within a distance, found in
the database a batch of items at a time, joined transitively (connected components).

Two plans, chosen like a search's. With the index: each item's `candidates` nearest by the
index (lateral join, one statement per batch), kept when their exact distance is within the
limit; an item whose candidates are all within it may have more, so it is asked again by an
exact range scan, which keeps the groups complete. Without the index (no index yet, a filter
matching few rows, or `exact`): an exact range scan per item over the matching rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from imgsearch.errors import InvalidArgument
from imgsearch.records import DuplicateGroup, DuplicateMember
from searcher.catalogue import Collection
from searcher.kinds import spec
from searcher.pool import ConnectionPool
from searcher.queries import Effort, Filter, Queries
from searcher.validation import MAX_EF_SEARCH

logger = logging.getLogger(__name__)

OTHER = sql.SQL("a.embedding")  # the vector of the item whose neighbours are sought


@dataclass(frozen=True)
class Progress:
    scanned: int
    total: int


class Groups:
    """Union-find over item ids: groups are the connected components of the pairs added."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}

    def _root(self, item: int) -> int:
        parent = self._parent.setdefault(item, item)
        while parent != item:
            grandparent = self._parent[parent]
            self._parent[item] = grandparent  # path halving
            item, parent = parent, grandparent
        return item

    def join(self, a: int, b: int) -> None:
        root_a, root_b = self._root(a), self._root(b)
        if root_a != root_b:
            # The smaller id becomes the root, so a group's root is its first member.
            low, high = sorted((root_a, root_b))
            self._parent[high] = low

    def components(self) -> list[list[int]]:
        """Each group's ids, ascending; groups ordered by their first id."""
        members: dict[int, list[int]] = {}
        for item in self._parent:
            members.setdefault(self._root(item), []).append(item)
        return [sorted(ids) for _, ids in sorted(members.items())]


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
    groups: Groups = field(default_factory=Groups)
    saturated: list[int] = field(default_factory=list)


class DuplicateFinder:
    def __init__(
        self,
        pool: ConnectionPool,
        queries: Queries,
        *,
        batch_rows: int = 256,
        neighbours: int = 32,
    ) -> None:
        self.pool = pool
        # Plans as a search does: the same exact-filter size and index settings.
        self.queries = queries
        # Items whose neighbours are found per statement: short enough to stay well under the
        # statement timeout and to notice a cancellation within a second or two.
        self.batch_rows = batch_rows
        # Index candidates fetched per item, at least.
        self.neighbours = neighbours

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
        """Progress after every batch of items scanned, then the groups (two or more items
        within `max_distance` of one another, transitively), by first id; at most `limit`
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
                groups = [ids for ids in scan.groups.components() if len(ids) > 1]
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
        """Every matching item's neighbours within the distance, a batch at a time, joined
        into scan.groups; items that may have more than the index gave go to scan.saturated."""
        start = -(2**63)
        while not cancelled():
            ids = self._batch(scan.collection, scan.filter, start)
            if not ids:
                return
            if scan.use_index:
                pairs = self._pairs_by_index(scan, ids)
                found: dict[int, int] = {}
                for a, _ in pairs:
                    found[a] = found.get(a, 0) + 1
                # All candidates within the distance (the item itself among them): there may be
                # more than the index was asked for.
                scan.saturated += [i for i, n in found.items() if n >= scan.candidates - 1]
                # The rows not in the index yet: compared exactly.
                pairs += self._pairs_exact(
                    scan.collection, scan.filter, ids, scan.max_distance, scan.collection.fresh
                )
            else:
                pairs = self._pairs_exact(scan.collection, scan.filter, ids, scan.max_distance)
            for a, b in pairs:
                scan.groups.join(a, b)
            scan.scanned += len(ids)
            yield Progress(scanned=scan.scanned, total=max(scan.total, scan.scanned))
            if ids[-1] == 2**63 - 1:
                return
            start = ids[-1] + 1

    def _rescan_saturated(self, scan: _Scan, cancelled: Callable[[], bool]) -> bool:
        """Join the saturated items' neighbours by an exact range scan; False if cancelled."""
        for first in range(0, len(scan.saturated), self.batch_rows):
            if cancelled():
                return False
            batch = scan.saturated[first : first + self.batch_rows]
            for a, b in self._pairs_exact(scan.collection, scan.filter, batch, scan.max_distance):
                scan.groups.join(a, b)
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

    def _batch(self, collection: Collection, filter: Filter, start: int) -> list[int]:
        """The next matching ids from `start` on, ascending (keyset pagination)."""
        where, params = filter.where(sql.SQL("id >= %(start)s"))
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id FROM {} {} ORDER BY id LIMIT %(batch)s").format(
                    collection.table, where
                ),
                {**params, "start": start, "batch": self.batch_rows},
            )
            return [row[0] for row in cur.fetchall()]

    def _pairs_by_index(self, scan: _Scan, ids: Sequence[int]) -> list[tuple[int, int]]:
        """Each item's neighbours among the indexed rows, by the index."""
        collection, effort, candidates = scan.collection, scan.effort, scan.candidates
        where, params = scan.filter.where(collection.indexed)
        # Candidates are kept by exact distance, so they need not come in order (re-ranked).
        settings = self.queries.index_settings(
            min(max(effort.ef_search, candidates), MAX_EF_SEARCH),
            filtered=bool(scan.filter),
            reranked=True,
        )
        # Each item's candidates in the index's order, then kept by their exact distance.
        query = sql.SQL(
            "SELECT a.id, n.id FROM {table} AS a CROSS JOIN LATERAL ("
            "SELECT c.id, c.embedding {op} a.embedding AS distance FROM "
            "(SELECT id, embedding FROM {table} {where} ORDER BY {order} LIMIT %(candidates)s) "
            "AS c) AS n WHERE a.id = ANY(%(ids)s) AND n.id <> a.id "
            "AND n.distance <= %(max_distance)s"
        ).format(
            table=collection.table,
            op=sql.SQL(collection.metric.operator),
            where=where,
            order=spec(collection.kind).candidate_order(collection, OTHER),
        )
        params = {
            **params,
            "ids": list(ids),
            "candidates": candidates,
            "max_distance": scan.max_distance,
        }
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(sql.SQL("; ").join([*settings, query]), params)
            return [(row[0], row[1]) for row in cur.fetchall()]

    def _pairs_exact(
        self,
        collection: Collection,
        filter: Filter,
        ids: Sequence[int],
        max_distance: float,
        *among: sql.Composable,
    ) -> list[tuple[int, int]]:
        """Each item's neighbours by exact distance, among every row or those `among` says."""
        distance = sql.SQL("embedding {} a.embedding").format(sql.SQL(collection.metric.operator))
        where, params = filter.where(*among, sql.SQL("{} <= %(max_distance)s").format(distance))
        query = sql.SQL(
            "SET LOCAL enable_indexscan = off; "
            "SELECT a.id, n.id FROM {table} AS a CROSS JOIN LATERAL "
            "(SELECT id FROM {table} {where}) AS n WHERE a.id = ANY(%(ids)s) AND n.id <> a.id"
        ).format(table=collection.table, where=where)
        with self.pool.connection(bulk=True) as conn, conn, conn.cursor() as cur:
            cur.execute(query, {**params, "ids": list(ids), "max_distance": max_distance})
            return [(row[0], row[1]) for row in cur.fetchall()]

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
