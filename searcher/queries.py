"""k-nearest-neighbour queries, planned per collection: the index walked for candidates (and
those re-ranked by exact distance for quantized kinds), or an exact scan where a filter leaves
few rows or the index cannot return enough."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg2 import sql

from imgsearch.errors import InvalidArgument, NotFound
from imgsearch.records import Hit
from searcher.catalogue import Collection
from searcher.cells import Cells, CellStore, are_graph_cells
from searcher.kinds import spec
from searcher.pgvector_io import as_array, vector_literal
from searcher.pool import ConnectionPool
from searcher.prepared import PreparedStatements
from searcher.schema import NO_CELL
from searcher.validation import MAX_CANDIDATES, MAX_EF_SEARCH


@dataclass(frozen=True)
class Filter:
    labels: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.labels or self.attributes)

    def where(self, *also: sql.Composable) -> tuple[sql.Composable, dict[str, Any]]:
        """The WHERE clause (empty for no filter) and its named parameters; `also` adds
        conditions of the caller's."""
        conditions: list[sql.Composable] = list(also)
        params: dict[str, Any] = {}
        if self.labels:
            conditions.append(sql.SQL("label = ANY(%(filter_labels)s)"))
            params["filter_labels"] = list(self.labels)
        if self.attributes:
            conditions.append(sql.SQL("attributes @> %(filter_attributes)s::jsonb"))
            params["filter_attributes"] = json.dumps(dict(self.attributes))
        if not conditions:
            return sql.SQL(""), params
        return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions), params


@dataclass(frozen=True)
class DistanceRange:
    """Which hits a search keeps by their distance to the query: `low` leaves out the query's
    near-duplicates (its own copies), `high` keeps only them. 0 means no bound at that end
    (inner-product distances can be negative, so 0 cannot mean "from zero")."""

    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("min_distance", self.low), ("max_distance", self.high)):
            if not math.isfinite(value):
                raise InvalidArgument(f"{name} must be a finite distance, got {value}")
        if self.low and self.high and self.low > self.high:
            raise InvalidArgument(
                f"min_distance ({self.low}) is above max_distance ({self.high}): no hit can lie "
                "between them"
            )

    def __bool__(self) -> bool:
        return bool(self.low or self.high)

    def too_near(self, distance: float) -> bool:
        return bool(self.low) and distance < self.low

    def too_far(self, distance: float) -> bool:
        return bool(self.high) and distance > self.high


ANY_DISTANCE = DistanceRange()


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    exact: bool


@dataclass(frozen=True)
class RangedResult:
    """A search's hits within its distance range, and how they were found: the query vector,
    and the `asked` nearest items fetched (`fetched`) to keep them."""

    result: SearchResult
    vector: np.ndarray
    asked: int
    fetched: SearchResult


@dataclass(frozen=True)
class Effort:
    """How hard one approximate search works: HNSW's candidate list, and for quantized kinds
    how many of its candidates are re-ranked by exact distance."""

    ef_search: int
    candidates: int  # 0: no re-ranking


class Queries:
    def __init__(
        self,
        pool: ConnectionPool,
        cells: CellStore,
        *,
        default_ef_search: int,
        exact_filter_rows: int,
    ) -> None:
        self.pool = pool
        self.cells = cells
        self.default_ef_search = default_ef_search
        # A filter matching at most this many rows is answered by an exact scan of those rows:
        # exact, and cheap with the label/attribute indexes. Above it, the index is used.
        self.exact_filter_rows = exact_filter_rows
        # pgvector 0.8's iterative index scans keep filtered HNSW results complete.
        self.iterative_scans = False
        self.prepared = PreparedStatements()

    def effort(self, collection: Collection, top_k: int, ef_search: int, candidates: int) -> Effort:
        """The request's effort, else the collection's (calibrated by its recall check), else
        the kind's default; candidates never fewer than top_k, ef_search never fewer than
        the candidates (one index scan returns at most ef_search rows)."""
        kind = spec(collection.kind)
        default_ef, default_candidates = kind.default_effort(self.default_ef_search)
        wanted = 0
        if kind.reranks:
            wanted = candidates or collection.candidates or default_candidates
            wanted = min(max(wanted, top_k), MAX_CANDIDATES)
        ef = ef_search or collection.ef_search or default_ef
        return Effort(ef_search=min(max(ef, wanted, top_k), MAX_EF_SEARCH), candidates=wanted)

    def index_settings(
        self, ef_search: int, *, filtered: bool, reranked: bool
    ) -> list[sql.Composable]:
        """The SET LOCAL statements for one walk of an HNSW index. With a filter: iterative
        scans where pgvector has them (re-ranked candidates need not come in order; full
        vectors must), else the widest candidate list, since the filter runs after the scan."""
        if filtered and not self.iterative_scans:
            ef_search = MAX_EF_SEARCH
        settings: list[sql.Composable] = [
            sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef_search))
        ]
        if filtered and self.iterative_scans:
            order = "relaxed_order" if reranked else "strict_order"
            settings.append(sql.SQL("SET LOCAL hnsw.iterative_scan = {}").format(sql.SQL(order)))
        return settings

    def nearest_in_range(
        self,
        collection: Collection,
        has_index: bool,
        query: np.ndarray | int,
        top_k: int,
        *,
        filter: Filter,
        ef_search: int,
        candidates: int,
        exact: bool,
        distances: DistanceRange,
        max_top_k: int,
    ) -> RangedResult:
        """The top_k items nearest to the query within `distances`. Hits come nearest first, so
        the ones below the range's low end are a prefix: ask for more until top_k remain past
        it, the collection runs out, or max_top_k is reached."""
        asked = top_k
        while True:
            effort = self.effort(collection, asked, ef_search, candidates)
            fetched, vector = self.nearest(
                collection, has_index, query, asked, filter=filter, effort=effort, exact=exact
            )
            too_near = sum(1 for hit in fetched.hits if distances.too_near(hit.distance))
            beyond = sum(1 for hit in fetched.hits if distances.too_far(hit.distance))
            kept = fetched.hits[too_near : len(fetched.hits) - beyond]
            if len(kept) >= top_k or beyond or len(fetched.hits) < asked or asked == max_top_k:
                break
            asked = min(max_top_k, max(2 * asked, top_k + too_near))
        result = SearchResult(hits=kept[:top_k], exact=fetched.exact) if distances else fetched
        return RangedResult(result, vector, asked, fetched)

    def nearest(
        self,
        collection: Collection,
        has_index: bool,
        query: np.ndarray | int,
        top_k: int,
        *,
        filter: Filter = Filter(),
        effort: Effort,
        exact: bool = False,
        background: bool = False,
    ) -> tuple[SearchResult, np.ndarray]:
        """The top_k items nearest to a vector (or to the stored item with id `query`), and the
        query vector. Always returns min(top_k, matching items) hits. `background`: for work
        nobody waits on (the upkeep's and the shadow monitor's searches), which must leave the
        cores to live searches: on a bulk connection, and an exact scan without parallel
        workers (a 1M-row scan with two took both cores for a second or more, and every search
        meanwhile waited: Search p50 11.6 ms instead of 4.4 at 1M, bench/RESULTS.md)."""
        where, params = filter.where()
        with self._reading(bulk=background) as cur:
            vector = (
                query
                if isinstance(query, np.ndarray)
                else self._stored_vector(cur, collection, query)
            )
            params = {**params, "query": vector_literal(vector), "top_k": top_k}
            use_index = has_index and not exact
            if use_index and filter:
                matching = self._count(cur, collection, where, params, self.exact_filter_rows + 1)
                use_index = matching > self.exact_filter_rows
            if use_index:
                hits = self._approximate(cur, collection, filter, params, effort, vector)
                # The index can return fewer rows than exist (filters, deleted rows): check.
                if len(hits) < top_k and self._count(cur, collection, where, params, top_k) > len(
                    hits
                ):
                    use_index = False
            if not use_index:
                hits = self._exact(cur, collection, where, params, parallel=not background)
        return SearchResult(hits=hits, exact=not use_index), vector

    def _approximate(
        self,
        cur: Any,
        collection: Collection,
        filter: Filter,
        params: dict[str, Any],
        effort: Effort,
        vector: np.ndarray,
    ) -> list[Hit]:
        """The index's nearest (re-ranked by exact distance for quantized kinds) merged with the
        fresh rows' nearest by exact scan: the rows not yet in the index."""
        settings = self.index_settings(
            effort.ef_search, filtered=bool(filter), reranked=bool(effort.candidates)
        )
        cells = self.cells.of(collection)
        # The walked graphs are parameters: under custom plans (prepared.py) PostgreSQL plans
        # with their values and takes each one's partial index, so one statement serves them.
        walked = graphs_walked(collection, cells, vector)
        walks = 0 if walked == (None,) else len(walked)
        params = {**params, **{f"graph_{i}": cell for i, cell in enumerate(walked[:walks])}}
        # A filter must keep each match within reach: its fresh rows are all scanned.
        if filter:
            cells = None
        if cells is not None:
            params = {**params, "cells": fresh_cells_scanned(collection, cells, vector, walked)}
        if effort.candidates:
            params = {**params, "candidates": effort.candidates}

        with_cells = cells is not None

        def query() -> sql.Composable:
            return self._approximate_sql(
                collection, filter, bool(effort.candidates), with_cells, walks
            )

        # One round trip: the settings and the query run as one implicit transaction.
        if filter:  # a filter's values would be parameters too: planned afresh each time
            cur.execute(sql.SQL("; ").join([*settings, query()]), params)
        else:
            types = {"query": "vector", **({"cells": "integer[]"} if with_cells else {})}
            types |= {f"graph_{i}": "integer" for i in range(walks)}
            literals: dict[str, int] = {
                name: params[name] for name in ("top_k", "candidates") if name in params
            }
            self.prepared.execute(
                cur, settings, (collection, with_cells, walks), query, params, types, literals
            )
        return _hits(cur.fetchall())

    def _approximate_sql(
        self,
        collection: Collection,
        filter: Filter,
        reranked: bool,
        with_cells: bool,
        walks: int,
    ) -> sql.Composable:
        """The search's SQL; `walks`: how many graphs by cell it walks (parameters graph_0,
        graph_1, ...), 0 for the one graph."""
        order_by = spec(collection.kind).candidate_order(collection)
        if walks:
            from_index = _graphs_sql(collection, filter, reranked, walks)
        elif reranked:
            indexed, _ = filter.where(collection.indexed)
            from_index = sql.SQL(
                "SELECT id, label, uri, attributes, {} AS distance FROM "
                "(SELECT id, label, uri, attributes, embedding FROM {} {} ORDER BY {} "
                "LIMIT %(candidates)s) AS candidates ORDER BY distance LIMIT %(top_k)s"
            ).format(_exact_distance(collection), collection.table, indexed, order_by)
        else:
            indexed, _ = filter.where(collection.indexed)
            from_index = sql.SQL(
                "SELECT id, label, uri, attributes, {} AS distance FROM {} {} "
                "ORDER BY distance LIMIT %(top_k)s"
            ).format(order_by, collection.table, indexed)
        from_fresh = sql.SQL(
            "SELECT id, label, uri, attributes, {} AS distance FROM ({}) AS fresh "
            "ORDER BY distance LIMIT %(top_k)s"
        ).format(_exact_distance(collection), fresh_rows_sql(collection, filter, with_cells))
        return sql.SQL(
            "SELECT * FROM (({}) UNION ALL ({})) AS hits ORDER BY distance LIMIT %(top_k)s"
        ).format(from_index, from_fresh)

    def _exact(
        self,
        cur: Any,
        collection: Collection,
        where: sql.Composable,
        params: dict[str, Any],
        *,
        parallel: bool = True,
    ) -> list[Hit]:
        # The statements of one string run in one implicit transaction: SET LOCAL ends with it.
        alone = "" if parallel else "SET LOCAL max_parallel_workers_per_gather = 0; "
        cur.execute(
            sql.SQL(
                alone + "SET LOCAL enable_indexscan = off; "
                "SELECT id, label, uri, attributes, {} AS distance FROM {} {} "
                "ORDER BY distance LIMIT %(top_k)s"
            ).format(_exact_distance(collection), collection.table, where),
            params,
        )
        return _hits(cur.fetchall())

    def _count(
        self,
        cur: Any,
        collection: Collection,
        where: sql.Composable,
        params: dict[str, Any],
        at_most: int,
    ) -> int:
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {} {} LIMIT %(count_limit)s) AS matching"
            ).format(collection.table, where),
            {**params, "count_limit": at_most},
        )
        count: int = cur.fetchone()[0]
        return count

    def _stored_vector(self, cur: Any, collection: Collection, item_id: int) -> np.ndarray:
        cur.execute(
            sql.SQL("SELECT embedding FROM {} WHERE id = %s").format(collection.table), (item_id,)
        )
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no item with id {item_id} in collection {collection.name!r}")
        return as_array(row[0])

    @contextlib.contextmanager
    def _reading(self, *, bulk: bool = False) -> Iterator[Any]:
        """A cursor whose statements each run in their own implicit transaction: a search
        needs no BEGIN and COMMIT round trips around its one query."""
        with self.pool.connection(bulk=bulk) as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    yield cur
            finally:
                if not conn.closed:
                    conn.autocommit = False


def fresh_rows_sql(collection: Collection, filter: Filter, with_cells: bool) -> sql.Composable:
    """The fresh rows a search scans exactly: those of the query's nearest cells (parameter
    `cells`) and every fresh row written without cells (searcher.cells); with no cells, every
    fresh row matching the filter."""
    # OFFSET 0 keeps each part a scan of its own: no index walk may answer them.
    if not with_cells:
        where, _ = filter.where(collection.fresh)
        return sql.SQL("SELECT * FROM {} {} OFFSET 0").format(collection.table, where)
    # Ranges of the (segment, cell) index, each read alone: the chosen cells of the segment
    # with cells, any fresh segment above it (rows whose writer saw a later build), and any
    # below it (none but while a build runs: writers fill the segment with cells).
    # The cells come through a sub-select, so that the planner sees no constant array: with
    # one it tried each value against every graph's partial index predicate, and at 1M rows
    # (80 graphs, 86 cells) planned 2.3 ms a search instead of 1.2 (bench/RESULTS.md).
    indexed, in_cells = collection.index_segment, collection.cells_segment
    parts = [
        "SELECT * FROM {table} WHERE segment = {in_cells} AND segment > {indexed} "
        "AND cell = ANY((SELECT %(cells)s)::integer[])",
        "SELECT * FROM {table} WHERE segment > {above}",
    ]
    if in_cells > indexed + 1:
        parts.append("SELECT * FROM {table} WHERE segment > {indexed} AND segment < {in_cells}")
    if collection.graph_cells:  # rows no graph by cell takes: written without a cell
        parts.append("SELECT * FROM {table} WHERE cell = {no_cell} AND segment <= {indexed}")
    return sql.SQL(" UNION ALL ".join(f"({part} OFFSET 0)" for part in parts)).format(
        table=collection.table,
        indexed=sql.Literal(indexed),
        in_cells=sql.Literal(in_cells),
        above=sql.Literal(max(indexed, in_cells)),
        no_cell=sql.Literal(NO_CELL),
    )


def fresh_cells_scanned(
    collection: Collection, cells: Cells, vector: np.ndarray, walked: tuple[int | None, ...]
) -> list[int]:
    """The cells whose fresh rows a search scans (parameter `cells`): its query's nearest, or
    over graphs by cell those of the graphs it walks (cells.fresh_probes), and the rows written
    without a cell."""
    if are_graph_cells(collection, cells):
        coarse = [graph for graph in walked if graph is not None]
    else:
        coarse = cells.nearest(vector)
    return [NO_CELL, *cells.scanned(vector, coarse)]


def graphs_walked(
    collection: Collection, cells: Cells | None, vector: np.ndarray
) -> tuple[int | None, ...]:
    """The graphs a search walks: the one graph (None), or the graphs of its query's nearest
    cells (every cell's if the cells are gone)."""
    if not collection.graph_cells:
        return (None,)
    if cells is None or not are_graph_cells(collection, cells):
        return tuple(range(collection.graph_cells))
    return tuple(cells.nearest(vector, collection.graph_probes))


def _graphs_sql(
    collection: Collection, filter: Filter, reranked: bool, walks: int
) -> sql.Composable:
    """The nearest rows of `walks` graphs by cell (parameters graph_0, graph_1, ...), each
    graph walked by a query of its own (its predicate written out, so that the planner takes
    its index), merged by exact distance."""
    order_by = spec(collection.kind).candidate_order(collection)
    each = sql.SQL("%(candidates)s" if reranked else "%(top_k)s")
    parts = []
    for walk in range(walks):
        where, _ = filter.where(collection.in_graph(sql.Placeholder(f"graph_{walk}")))
        parts.append(
            sql.SQL(
                "(SELECT id, label, uri, attributes, embedding FROM {} {} ORDER BY {} LIMIT {})"
            ).format(collection.table, where, order_by, each)
        )
    return sql.SQL(
        "SELECT id, label, uri, attributes, {} AS distance FROM ({}) AS candidates "
        "ORDER BY distance LIMIT %(top_k)s"
    ).format(_exact_distance(collection), sql.SQL(" UNION ALL ").join(parts))


def _exact_distance(collection: Collection) -> sql.Composable:
    return sql.SQL("embedding {} %(query)s::vector").format(sql.SQL(collection.metric.operator))


def _hits(rows: list[Any]) -> list[Hit]:
    return [
        Hit(id=row[0], label=row[1], uri=row[2], attributes=row[3], distance=float(row[4]))
        for row in rows
    ]
