"""The searcher's plain-Python core: collections of embeddings in PostgreSQL + pgvector.

It composes the parts, each in its own module: the catalogue (searcher.catalogue), the index
kinds and their builds (searcher.kinds, searcher.indexes), loading (searcher.loader), queries
(searcher.queries), and measured recall with the upkeep it drives (searcher.recall,
searcher.maintenance). No gRPC here; the servicer sits on top.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from psycopg2 import sql

from imgsearch.errors import ImageSearchError, InvalidArgument, ResourceExhausted
from searcher.catalogue import (
    DEFAULT_COLLECTION,
    DEFAULT_DIM,
    MAX_DIM,
    Catalogue,
    Collection,
    IndexKind,
    Metric,
    validate_collection_name,
)
from searcher.duplicates import DuplicateFinder, DuplicateGroup, Progress
from searcher.indexes import IndexBuilder
from searcher.kinds import spec
from searcher.loader import (
    Limits,
    Loader,
    UpsertCounts,
    UpsertSession,
    check_attributes,
    check_text,
    check_vector,
)
from searcher.maintenance import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, IndexMaintenance
from searcher.pgvector_io import Item, item_from_row
from searcher.pool import ConnectionPool
from searcher.queries import (
    ANY_DISTANCE,
    DistanceRange,
    Effort,
    Filter,
    Hit,
    Queries,
    SearchResult,
    check_effort,
)
from searcher.recall import ShadowMonitor, ShadowQuery
from searcher.schema import DATA_SCHEMA, apply_migrations

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "Collection",
    "DistanceRange",
    "DuplicateGroup",
    "Filter",
    "Hit",
    "IndexKind",
    "Item",
    "Limits",
    "Metric",
    "Progress",
    "SearchResult",
    "Stats",
    "UpsertCounts",
    "VectorStore",
]

# The database settings a user tuning the searcher needs to see (GetStats, `imgsearch stats`).
REPORTED_SETTINGS = (
    "shared_buffers",
    "effective_cache_size",
    "maintenance_work_mem",
    "work_mem",
    "max_parallel_maintenance_workers",
    "max_parallel_workers_per_gather",
)


@dataclass(frozen=True)
class Stats:
    collection: Collection
    row_count: int
    index_present: bool
    table_bytes: int
    index_bytes: int
    postgres_version: str
    pgvector_version: str
    settings: dict[str, str]
    live_recall: float | None  # over the last shadow queries of this searcher


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class VectorStore:
    """Thread-safe; every request is one short transaction (or one implicit one)."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        limits: Limits = Limits(),
        default_kind: IndexKind = IndexKind.HALFVEC,
        default_ef_search: int = 400,
        exact_filter_rows: int = 20_000,
        maintenance_work_mem: str = "",
        recall_floor: float = 0.95,
        recall_target: float = 0.99,
        recall_sample: int = 200,
        shadow_share: float = 0.01,
        shadow_budget: float = 0.05,
    ) -> None:
        self.pool = pool
        self.limits = limits
        self.default_kind = default_kind
        self.postgres_version = ""
        self.pgvector_version = ""
        self.citus_version = ""  # set when the database is a Citus cluster
        self.catalogue = Catalogue(pool, create_default=self._create_default)
        self.builder = IndexBuilder(pool, self.catalogue, maintenance_work_mem=maintenance_work_mem)
        self.loader = Loader(pool, self.builder, limits)
        self.queries = Queries(
            pool, default_ef_search=default_ef_search, exact_filter_rows=exact_filter_rows
        )
        self.duplicates = DuplicateFinder(pool, self.queries)
        self.maintenance = IndexMaintenance(
            pool,
            self.catalogue,
            self.builder,
            self._approximate_search,
            recall_floor=recall_floor,
            recall_target=recall_target,
            recall_sample=recall_sample,
            default_ef_search=default_ef_search,
        )
        self.shadow = ShadowMonitor(self._shadow_exact, share=shadow_share, budget=shadow_budget)
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
            self.maintenance.check_unmeasured()

    def close(self) -> None:
        """Stop the background upkeep (a build in progress finishes first)."""
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
    ) -> Collection:
        validate_collection_name(name)
        if not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be between 1 and {MAX_DIM}, got {dim}")
        m = m or DEFAULT_M
        ef_construction = ef_construction or DEFAULT_EF_CONSTRUCTION
        if not 2 <= m <= 100:
            raise InvalidArgument(f"index m must be between 2 and 100, got {m}")
        if not 2 * m <= ef_construction <= 1000:
            raise InvalidArgument(
                f"index ef_construction must be between 2*m ({2 * m}) and 1000, "
                f"got {ef_construction}"
            )
        if len(model_fingerprint.encode()) > 256 or "\x00" in model_fingerprint:
            raise InvalidArgument("model_fingerprint must be at most 256 bytes of text")
        kind = kind or self._default_kind_for(metric)
        spec(kind).check(metric, self.pgvector)
        draft = Collection(
            name=name,
            dim=dim,
            metric=metric,
            kind=kind,
            m=m,
            ef_construction=ef_construction,
            model_fingerprint=model_fingerprint,
            created_at=None,  # type: ignore[arg-type]  # set by the database below
        )
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            collection = replace(draft, created_at=self.catalogue.insert(cur, draft))
            table = collection.table
            cur.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint PRIMARY KEY, label text NOT NULL DEFAULT '', "
                    "uri text NOT NULL DEFAULT '', attributes jsonb NOT NULL DEFAULT '{{}}', "
                    "embedding vector({}) NOT NULL)"
                ).format(table, sql.Literal(dim))
            )
            # Keep 4 KB vectors inline instead of in TOAST: exact scans 4-5x faster, and the
            # planner can build the HNSW index in parallel.
            cur.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN embedding SET STORAGE PLAIN").format(table)
            )
            cur.execute(sql.SQL("CREATE INDEX ON {} (label)").format(table))
            cur.execute(
                sql.SQL("CREATE INDEX ON {} USING gin (attributes jsonb_path_ops)").format(table)
            )
            self.builder.create_empty(cur, collection)
            if self.citus_version:
                # Shards by id across the workers; each shard gets its own HNSW index, and
                # Citus runs a k-NN query on every shard and merges the results.
                cur.execute(
                    "SELECT create_distributed_table(%s, 'id')", (collection.qualified_table,)
                )
        logger.info(
            "created collection %s (dim %d, %s, %s index)", name, dim, metric.value, kind.name
        )
        self.catalogue.forget(name)
        return collection

    def _default_kind_for(self, metric: Metric) -> IndexKind:
        """The server's default kind, or the next one down that can serve this metric on this
        pgvector (BINARY cannot serve inner product; pgvector 0.6 has only VECTOR)."""
        for kind in dict.fromkeys((self.default_kind, IndexKind.HALFVEC, IndexKind.VECTOR)):
            try:
                spec(kind).check(metric, self.pgvector)
            except ImageSearchError:
                continue
            return kind
        return IndexKind.VECTOR

    def _create_default(self) -> Collection:
        return self.create_collection(DEFAULT_COLLECTION, DEFAULT_DIM)

    def get_collection(self, name: str) -> Collection:
        return self.catalogue.get(name, fresh=True)[0]

    def list_collections(self) -> list[Collection]:
        return self.catalogue.list()

    def drop_collection(self, name: str) -> None:
        validate_collection_name(name)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            self.catalogue.delete(cur, name)
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(DATA_SCHEMA, name))
            )
            self.builder.drop_quantizers(cur, name)
        self.catalogue.forget(name)
        logger.info("dropped collection %s", name)

    # -- writing ------------------------------------------------------------------------------

    def begin_upsert(self, name: str) -> UpsertSession:
        """Start a bulk load: .write() each message, then .close() (builds a deferred index)."""
        collection, has_index = self.catalogue.get(name, fresh=True)
        return UpsertSession(self.loader, collection, has_index, on_close=self._after_load)

    def upsert(self, name: str, items: Sequence[Item]) -> UpsertCounts:
        """Insert or update items in one transaction (no index deferral)."""
        collection, _ = self.catalogue.get(name)
        return self.loader.write(collection, items)[0]

    def _after_load(self, session: UpsertSession, build_deferred: bool) -> None:
        if build_deferred:
            built = self.builder.build(session.collection, concurrently=False)
            if built.generation != session.collection.generation:
                self.maintenance.after_build(built)
        elif session.counts.inserted:
            self.maintenance.after_load(session.collection, session.counts.inserted)

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
    ) -> SearchResult:
        """The top_k items nearest to a vector (or to the stored item with id `query`).

        Always returns min(top_k, matching items) hits, with exact distances whatever the
        index kind. Filters that match few rows are answered exactly; otherwise the index is
        walked (with iterative scans on pgvector 0.8+) and an exact scan is the fallback
        whenever the index returns too few rows. With `distances`, only hits in that range
        are returned: fewer than top_k when fewer lie in it (or when over max_top_k items lie
        closer than its low end).
        """
        collection, has_index = self.catalogue.get(name)
        if not 1 <= top_k <= self.limits.max_top_k:
            raise InvalidArgument(
                f"top_k must be between 1 and {self.limits.max_top_k} (max_top_k), got {top_k}"
            )
        check_effort(ef_search, candidates)
        self._check_filter(filter)
        if not isinstance(query, int):
            query = np.asarray(query, dtype=np.float32)
            check_vector(query, collection, "query")
        # Hits come nearest first, so the ones below the range's low end are a prefix: ask
        # for more until top_k remain past it, the collection runs out, or max_top_k is hit.
        asked = top_k
        while True:
            effort = self.queries.effort(collection, asked, ef_search, candidates)
            result, vector = self.queries.nearest(
                collection, has_index, query, asked, filter=filter, effort=effort, exact=exact
            )
            too_near = sum(1 for hit in result.hits if distances.too_near(hit.distance))
            beyond = sum(1 for hit in result.hits if distances.too_far(hit.distance))
            kept = result.hits[too_near : len(result.hits) - beyond]
            if (
                len(kept) >= top_k
                or beyond
                or len(result.hits) < asked
                or asked == self.limits.max_top_k
            ):
                break
            asked = min(self.limits.max_top_k, max(2 * asked, top_k + too_near))
        self.shadow.offer(ShadowQuery(collection, vector, asked, filter, result))
        if not distances:
            return result
        return SearchResult(hits=kept[:top_k], exact=result.exact)

    def find_duplicates(
        self,
        name: str,
        max_distance: float,
        *,
        filter: Filter = Filter(),
        limit: int = 0,
        exact: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[Progress | DuplicateGroup]:
        """Progress while the collection is scanned, then its groups of items within
        `max_distance` of one another (transitively), by first id (searcher.duplicates)."""
        collection, has_index = self.catalogue.get(name, fresh=True)
        self._check_filter(filter)
        if limit < 0:
            raise InvalidArgument(f"limit must be 0 (every group) or more, got {limit}")
        effort = self.queries.effort(collection, 1, 0, 0)
        return self.duplicates.find(
            collection,
            has_index,
            max_distance,
            filter=filter,
            effort=effort,
            limit=limit,
            exact=exact,
            cancelled=cancelled,
        )

    def _approximate_search(self, collection: Collection) -> Any:
        """The live approximate path of this collection, for the recall check."""

        def search(vector: np.ndarray, top_k: int) -> list[Hit]:
            effort = self.queries.effort(collection, top_k, 0, 0)
            result, _ = self.queries.nearest(collection, True, vector, top_k, effort=effort)
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
        )
        return result.hits

    def get(
        self, name: str, ids: Sequence[int], *, include_vectors: bool = False
    ) -> tuple[list[Item], list[int]]:
        """The items with these ids (in request order) and the ids that were not found."""
        collection, _ = self.catalogue.get(name)
        self._check_id_count(ids)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE id = ANY(%s)").format(
                    _item_columns(include_vectors), collection.table
                ),
                (list(ids),),
            )
            found = {item.id: item for item in map(item_from_row, cur.fetchall())}
        items = [found[i] for i in dict.fromkeys(ids) if i in found]
        return items, [i for i in ids if i not in found]

    def list_items(
        self, name: str, *, after_id: int | None, limit: int, include_vectors: bool = False
    ) -> list[Item]:
        """Up to `limit` items with ids above `after_id` (from the start when None), by id."""
        collection, _ = self.catalogue.get(name)
        if not 1 <= limit <= self.limits.max_ids_per_request:
            raise InvalidArgument(
                f"page_size must be between 1 and {self.limits.max_ids_per_request}, got {limit}"
            )
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE id > %s ORDER BY id LIMIT %s").format(
                    _item_columns(include_vectors), collection.table
                ),
                (-1 if after_id is None else after_id, limit),
            )
            return list(map(item_from_row, cur.fetchall()))

    def delete(self, name: str, *, ids: Sequence[int] = (), filter: Filter = Filter()) -> int:
        collection, _ = self.catalogue.get(name)
        if bool(ids) == bool(filter):
            raise InvalidArgument("give either ids or a non-empty filter to delete, not both")
        self._check_id_count(ids)
        self._check_filter(filter)
        where: sql.Composable
        if ids:
            where, params = sql.SQL("WHERE id = ANY(%(ids)s)"), {"ids": list(ids)}
        else:
            where, params = filter.where()
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} {}").format(collection.table, where), params)
            deleted: int = cur.rowcount
        return deleted

    def stats(self, name: str) -> Stats:
        collection, _ = self.catalogue.get(name, fresh=True)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {}), to_regclass(%s) IS NOT NULL, "
                    "pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)"
                ).format(collection.table),
                (
                    f"{DATA_SCHEMA}.{collection.index_name()}",
                    collection.qualified_table,
                    collection.qualified_table,
                ),
            )
            rows, has_index, table_bytes, index_bytes = cur.fetchone()
            cur.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                (list(REPORTED_SETTINGS),),
            )
            settings = dict(cur.fetchall())
        return Stats(
            collection=collection,
            row_count=rows,
            index_present=has_index,
            table_bytes=table_bytes,
            index_bytes=index_bytes,
            postgres_version=self.postgres_version,
            pgvector_version=self.pgvector_version,
            settings=settings,
            live_recall=self.shadow.recall(collection.name),
        )

    # -- checks -------------------------------------------------------------------------------

    def _check_id_count(self, ids: Sequence[int]) -> None:
        if len(ids) > self.limits.max_ids_per_request:
            raise ResourceExhausted(
                f"{len(ids)} ids in one request; the limit is {self.limits.max_ids_per_request} "
                "(max_ids_per_request)"
            )

    def _check_filter(self, filter: Filter) -> None:
        limits = self.limits
        if len(filter.labels) > limits.max_filter_labels:
            raise ResourceExhausted(
                f"{len(filter.labels)} labels in a filter; the limit is {limits.max_filter_labels} "
                "(max_filter_labels)"
            )
        for label in filter.labels:
            check_text(label, "filter label", limits.max_text_bytes, "filter")
        check_attributes(dict(filter.attributes), limits, "filter")


def _item_columns(include_vectors: bool) -> sql.Composable:
    """The columns item_from_row reads; the vector only when asked for (4 KB a row)."""
    return sql.SQL("id, label, uri, attributes, {}").format(
        sql.SQL("embedding" if include_vectors else "NULL")
    )
