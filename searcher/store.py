"""The searcher's plain-Python core: collections of embeddings in PostgreSQL + pgvector.

A front over the parts, each in its own module: the rules every request meets
(searcher.validation), the catalogue and its tables (searcher.catalogue), the index kinds and
their builds (searcher.kinds, searcher.indexes), loading (searcher.loader), queries
(searcher.queries), item reads and deletes (searcher.items), duplicates (searcher.duplicates),
stats (searcher.stats), and measured recall with the upkeep it drives (searcher.recall,
searcher.maintenance). No gRPC here; the servicer sits on top.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from imgsearch import defaults
from imgsearch.errors import ImageSearchError, InvalidArgument, NotFound
from imgsearch.names import check_collection_name
from imgsearch.records import DuplicateGroup, Hit
from searcher.catalogue import (
    DEFAULT_DIM,
    Catalogue,
    Collection,
    IndexKind,
    Metric,
    check_vector_name,
    named_vector_table,
)
from searcher.cell_graphs import rebuilt_graphs
from searcher.cells import CellStore
from searcher.duplicates import DuplicateFinder, Progress
from searcher.indexes import IndexBuilder
from searcher.items import Items
from searcher.kinds import spec
from searcher.leftovers import clean_up
from searcher.loader import Loader, UpsertCounts, UpsertSession
from searcher.maintenance import IndexMaintenance
from searcher.named_vectors import VectorSpec, check_specs, split_items
from searcher.pgvector_io import Item
from searcher.pool import ConnectionPool
from searcher.quantizers import drop_quantizers
from searcher.queries import ANY_DISTANCE, DistanceRange, Effort, Filter, Queries, SearchResult
from searcher.recall import ShadowMonitor, ShadowQuery
from searcher.repairs import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from searcher.schema import apply_migrations
from searcher.settings import StoreSettings
from searcher.stats import Stats, collection_stats
from searcher.validation import (
    check_effort,
    check_filter,
    check_new_collection,
    check_top_k,
    check_vector,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Collection",
    "DistanceRange",
    "Filter",
    "IndexKind",
    "Item",
    "Metric",
    "VectorSpec",
    "VectorStore",
]


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class VectorStore:
    """Thread-safe; every request is one short transaction (or one implicit one)."""

    def __init__(self, pool: ConnectionPool, settings: StoreSettings = StoreSettings()) -> None:
        self.pool = pool
        self.settings = settings
        self.limits = settings.limits
        self.postgres_version = ""
        self.pgvector_version = ""
        self.citus_version = ""  # set when the database is a Citus cluster
        self.catalogue = Catalogue(pool, create_default=self._create_default)
        self.cells = CellStore(pool)
        self.builder = IndexBuilder(
            pool,
            self.catalogue,
            self.cells,
            maintenance_work_mem=settings.maintenance_work_mem,
            graph_cells_from=settings.graph_cells_from,
            held_out_rows=settings.recall_sample,
        )
        self.loader = Loader(pool, self.builder, self.cells, self.limits)
        self.queries = Queries(
            pool,
            self.cells,
            default_ef_search=settings.default_ef_search,
            exact_filter_rows=settings.exact_filter_rows,
        )
        self.items = Items(pool, self.limits)
        self.duplicates = DuplicateFinder(pool, self.queries)
        self.maintenance = IndexMaintenance(
            pool,
            self.catalogue,
            self.builder,
            self._approximate_search,
            recall_floor=settings.recall_floor,
            recall_target=settings.recall_target,
            recall_sample=settings.recall_sample,
            default_ef_search=settings.default_ef_search,
            fold_share=settings.fold_share,
        )
        self.shadow = ShadowMonitor(
            self._shadow_exact, share=settings.shadow_share, budget=settings.shadow_budget
        )
        self._opened = False

    def open(self) -> None:
        """Apply migrations, detect the versions, start the background upkeep. Raises
        Unavailable when the database is unreachable."""
        with self.pool.connection() as conn:
            version = apply_migrations(conn)
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                self.postgres_version = cur.fetchone()[0]
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                self.pgvector_version = cur.fetchone()[0]
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
                row = cur.fetchone()
                self.citus_version = row[0] if row else ""
            conn.rollback()
        if self.citus_version:
            logger.info("Citus %s: collection tables are distributed by id", self.citus_version)
            # Its shards are the segments there: one graph per shard, not per cell.
            self.builder.generation_cells.graph_cells_from = 0
        self.queries.iterative_scans = self.pgvector >= (0, 8, 0)
        logger.info(
            "schema version %d, PostgreSQL %s, pgvector %s",
            version,
            self.postgres_version,
            self.pgvector_version,
        )
        if not self._opened:
            self._opened = True
            self.maintenance.start()
            self.shadow.start()
            for name, task in clean_up(self.builder).items():
                self.maintenance.schedule(task, name)
            self.maintenance.schedule_left_undone()
            self.resume()

    def resume(self) -> None:
        """Fold what is fresh in every collection: rows a fold did not finish before this
        searcher started, or before the database went away."""
        try:
            for collection in self.catalogue.list():
                self.maintenance.fold_all(collection.name)
        except ImageSearchError as exc:
            logger.warning("fresh rows are folded later: %s", exc)

    def close(self) -> None:
        """Stop the background upkeep: queued tasks wait for the next start, and a statement
        still running after a moment (a build) is cancelled (IndexMaintenance.stop)."""
        self.maintenance.stop()
        self.shadow.stop()
        self._opened = False

    @property
    def pgvector(self) -> tuple[int, ...]:
        return parse_version(self.pgvector_version)

    # -- collections -------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        dim: int,
        metric: Metric = Metric.L2,
        *,
        kind: IndexKind | None = None,
        m: int = 0,
        ef_construction: int = 0,
        model_fingerprint: str = "",
        vectors: Sequence[VectorSpec] = (),
    ) -> Collection:
        """Create a collection, with the tables of its named vectors (searcher.named_vectors)
        in the same transaction."""
        check_specs(vectors)
        own = VectorSpec("", dim, metric, kind, m, ef_construction, model_fingerprint)
        drafts = [self._draft(name, own)]
        drafts += [
            replace(self._draft(name, v), name=named_vector_table(name, v.name), parent=name)
            for v in vectors
        ]
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            created = []
            for draft in drafts:
                created.append(
                    self.catalogue.create(cur, draft, distributed=bool(self.citus_version))
                )
                self.builder.create_empty(cur, created[-1])
        for table in created:
            logger.info(
                "created %s (dim %d, %s, %s index)",
                table.described,
                table.dim,
                table.metric.value,
                table.kind.name,
            )
            self.catalogue.forget(table.name)
        return created[0]

    def _draft(self, name: str, vector: VectorSpec) -> Collection:
        m = vector.m or DEFAULT_M
        ef_construction = vector.ef_construction or DEFAULT_EF_CONSTRUCTION
        check_new_collection(name, vector.dim, m, ef_construction, vector.model_fingerprint)
        kind = vector.kind or self._default_kind_for(vector.metric)
        spec(kind).check(vector.metric, self.pgvector)
        return Collection(
            name=name,
            dim=vector.dim,
            metric=vector.metric,
            kind=kind,
            m=m,
            ef_construction=ef_construction,
            model_fingerprint=vector.model_fingerprint,
            created_at=None,  # type: ignore[arg-type]  # set by the database
            vector_name=vector.name,
        )

    def _default_kind_for(self, metric: Metric) -> IndexKind:
        """The server's default kind, or the next one down that can serve this metric on this
        pgvector (BINARY cannot serve inner product; pgvector 0.6 has only VECTOR)."""
        preferred = (self.settings.default_kind, IndexKind.HALFVEC, IndexKind.VECTOR)
        for kind in dict.fromkeys(preferred):
            try:
                spec(kind).check(metric, self.pgvector)
            except ImageSearchError:
                continue
            return kind
        return IndexKind.VECTOR

    def _create_default(self) -> Collection:
        return self.create_collection(defaults.COLLECTION, DEFAULT_DIM)

    def get_collection(self, name: str) -> Collection:
        return self.catalogue.get(name, fresh=True)[0]

    def list_collections(self) -> list[Collection]:
        return [c for c in self.catalogue.list() if not c.parent]

    def named_vectors(self, name: str) -> list[Collection]:
        """The tables of a collection's named vectors, by vector name."""
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            return self.catalogue.named_vectors(cur, name or defaults.COLLECTION)

    def rebuilt_graphs(self, tables: Sequence[Collection]) -> dict[str, list[tuple[int, int, int]]]:
        """By table name, its graphs by cell a repair rebuilt with other parameters."""
        by_cell = [t for t in tables if t.graph_cells > 1]
        if not by_cell:  # one graph each (most collections): no connection taken
            return {}
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            return {t.name: rebuilt_graphs(cur, t) for t in by_cell}

    def _table(self, name: str, vector: str, *, fresh: bool = False) -> tuple[Collection, bool]:
        """The table searched for `vector` of the collection: its own (""), or a named one's."""
        collection, has_index = self.catalogue.get(name, fresh=fresh)
        if not vector:
            return collection, has_index
        check_vector_name(vector)
        try:
            return self.catalogue.get(named_vector_table(collection.name, vector), fresh=fresh)
        except NotFound:
            has = ", ".join(t.vector_name for t in self.named_vectors(collection.name))
            raise InvalidArgument(
                f"collection {collection.name!r} has no vector named {vector[:40]!r}; its named "
                f"vectors: {has or 'none'} (leave the name empty for its own vector)"
            ) from None

    def drop_collection(self, name: str) -> None:
        check_collection_name(name)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            tables = self.catalogue.drop(cur, name)
            for table in [name, *tables]:
                drop_quantizers(cur, table)
        self.catalogue.forget(name)
        logger.info("dropped collection %s", name)

    # -- writing ------------------------------------------------------------------------------

    def begin_upsert(self, name: str, *, expected_items: int = 0) -> UpsertSession:
        """Start a bulk load: .write() each message, then .close() (builds a deferred index).
        `expected_items`: about how many items it writes in all, if its writer knows."""
        check_collection_name(name or defaults.COLLECTION)
        collection, has_index = self.catalogue.get(name, fresh=True)
        named = [self.catalogue.get(table.name, fresh=True) for table in self.named_vectors(name)]
        tables = [collection.name, *(table.name for table, _ in named)]

        def writing() -> None:
            for table in tables:
                self.maintenance.writing(table)

        return UpsertSession(
            self.loader,
            collection,
            has_index,
            named=named,
            on_close=self._after_load,
            on_write=writing,
            expected_items=expected_items,
        )

    def upsert(self, name: str, items: Sequence[Item]) -> UpsertCounts:
        """Insert or update items in one transaction (no index deferral)."""
        check_collection_name(name or defaults.COLLECTION)
        collection, _ = self.catalogue.get(name)
        named = self.named_vectors(collection.name)
        parts = split_items(collection, named, items)
        counts = self.loader.write(collection, items, named=parts)[0]
        for table in [collection, *named]:
            self.maintenance.written(table.name)
        return counts

    def _after_load(self, table: Collection, counts: UpsertCounts, build_deferred: bool) -> None:
        if build_deferred:
            built = self.builder.build(table, concurrently=False)
            if built.generation != table.generation:
                self.maintenance.after_build(built)
            return
        if counts.inserted:
            self.maintenance.after_load(table, counts.inserted)
        if counts.inserted or counts.updated:
            self.maintenance.written(table.name)

    def build_index(self, name: str) -> Collection:
        """Build the next generation of a collection's index now (for tests and tools)."""
        collection, _ = self.catalogue.get(name, fresh=True)
        built = self.builder.build(collection, concurrently=True)
        self.maintenance.after_build(built)
        return built

    # -- reading ------------------------------------------------------------------------------

    def search(
        self,
        name: str,
        query: np.ndarray | int,
        top_k: int,
        *,
        filter: Filter = Filter(),
        ef_search: int = 0,
        candidates: int = 0,
        exact: bool = False,
        distances: DistanceRange = ANY_DISTANCE,
        vector: str = "",
    ) -> SearchResult:
        """The top_k items nearest to a vector (or to the stored item with id `query`).

        Always returns min(top_k, matching items) hits, with exact distances whatever the
        index kind. Filters that match few rows are answered exactly; otherwise the index is
        walked (with iterative scans on pgvector 0.8+) and an exact scan is the fallback
        whenever the index returns too few rows. With `distances`, only hits in that range
        are returned: fewer than top_k when fewer lie in it (or when over max_top_k items lie
        closer than its low end). `vector` names one of the collection's named vectors to
        search instead of its own.
        """
        collection, has_index = self._table(name, vector)
        check_top_k(top_k, self.limits)
        check_effort(ef_search, candidates)
        check_filter(filter.labels, dict(filter.attributes), self.limits)
        if not isinstance(query, int):
            query = np.asarray(query, dtype=np.float32)
            check_vector(query, collection, "query")
        ranged = self.queries.nearest_in_range(
            collection,
            has_index,
            query,
            top_k,
            filter=filter,
            ef_search=ef_search,
            candidates=candidates,
            exact=exact,
            distances=distances,
            max_top_k=self.limits.max_top_k,
        )
        self.shadow.offer(
            ShadowQuery(collection, ranged.vector, ranged.asked, filter, ranged.fetched)
        )
        return ranged.result

    def find_duplicates(
        self,
        name: str,
        max_distance: float,
        *,
        filter: Filter = Filter(),
        limit: int = 0,
        exact: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
        vector: str = "",
    ) -> Iterator[Progress | DuplicateGroup]:
        """Progress while the collection is scanned, then its groups of items each within
        `max_distance` of every other, largest first (searcher.duplicates), by its own vectors
        or its named `vector`."""
        collection, has_index = self._table(name, vector, fresh=True)
        check_filter(filter.labels, dict(filter.attributes), self.limits)
        if limit < 0:
            raise InvalidArgument(f"limit must be 0 (every group) or more, got {limit}")
        return self.duplicates.find(
            collection,
            has_index,
            max_distance,
            filter=filter,
            effort=self.queries.effort(collection, 1, 0, 0),
            limit=limit,
            exact=exact,
            cancelled=cancelled,
        )

    def _approximate_search(self, collection: Collection) -> Callable[[np.ndarray, int], list[Hit]]:
        """The live approximate path of this collection, for the recall check."""

        def search(vector: np.ndarray, top_k: int) -> list[Hit]:
            effort = self.queries.effort(collection, top_k, 0, 0)
            result, _ = self.queries.nearest(
                collection, True, vector, top_k, effort=effort, background=True
            )
            return result.hits

        return search

    def _shadow_exact(self, shadow: ShadowQuery) -> list[Hit]:
        result, _ = self.queries.nearest(
            shadow.collection,
            False,
            shadow.vector,
            shadow.top_k,
            filter=shadow.filter,
            effort=Effort(0, 0),
            exact=True,
            background=True,
        )
        return result.hits

    def get(
        self, name: str, ids: Sequence[int], *, include_vectors: bool = False
    ) -> tuple[list[Item], list[int]]:
        """The items with these ids (in request order) and the ids that were not found."""
        collection, _ = self.catalogue.get(name)
        items, missing = self.items.get(collection, ids, include_vectors=include_vectors)
        return self._with_named_vectors(collection, items, include_vectors), missing

    def list_items(
        self, name: str, *, after_id: int | None, limit: int, include_vectors: bool = False
    ) -> list[Item]:
        """Up to `limit` items with ids above `after_id` (from the start when None), by id."""
        collection, _ = self.catalogue.get(name)
        items = self.items.page(
            collection, after_id=after_id, limit=limit, include_vectors=include_vectors
        )
        return self._with_named_vectors(collection, items, include_vectors)

    def _with_named_vectors(
        self, collection: Collection, items: list[Item], include_vectors: bool
    ) -> list[Item]:
        """`items` with their named vectors filled in, when vectors are asked for."""
        if not include_vectors or not items:
            return items
        ids = [item.id for item in items]
        for table in self.named_vectors(collection.name):
            rows, _ = self.items.get(table, ids, include_vectors=True)
            found = {row.id: row.vector for row in rows}
            for item in items:
                if item.id in found:
                    item.vectors[table.vector_name] = found[item.id]
        return items

    def delete(self, name: str, *, ids: Sequence[int] = (), filter: Filter = Filter()) -> int:
        check_collection_name(name or defaults.COLLECTION)
        collection, _ = self.catalogue.get(name)
        named = self.named_vectors(collection.name)
        return self.items.delete(collection, ids=ids, filter=filter, named=named)

    def stats(self, name: str, vector: str = "") -> Stats:
        collection, _ = self._table(name, vector, fresh=True)
        return collection_stats(
            self.pool,
            collection,
            versions=(self.postgres_version, self.pgvector_version),
            live_recall=self.shadow.recall(collection.name),
            cells=self.cells.of(collection),
        )
