"""Collections of embeddings in PostgreSQL + pgvector: bulk loading by binary COPY, kNN search."""

from __future__ import annotations

import enum
import hashlib
import io
import json
import logging
import re
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from imgsearch.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from searcher.pool import ConnectionPool
from searcher.schema import CATALOG_SCHEMA, DATA_SCHEMA, apply_migrations

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "images"
DEFAULT_DIM = 1000
COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_DIM = 16000  # pgvector's limit for a stored vector
MAX_INDEXED_DIM = 2000  # pgvector's limit for an HNSW index on `vector`
MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search
MAX_ID = 2**63 - 1
DEFAULT_M = 16
# pgvector's default of 64 left recall@10 near 0.94 on clustered 1000-d data whatever the
# ef_search (parts of the graph unreachable). 128 usually reached 0.99+, but 1 build in 12 stayed
# at 0.969 at any ef_search; 200 gave 0.999 in all 22, for ~55% more build time
# (bench/hnsw_builds.py, bench/RESULTS.md).
DEFAULT_EF_CONSTRUCTION = 200


class Metric(enum.Enum):
    L2 = "l2"
    COSINE = "cosine"
    INNER_PRODUCT = "inner_product"

    @property
    def operator(self) -> str:
        return {"l2": "<->", "cosine": "<=>", "inner_product": "<#>"}[self.value]

    @property
    def opclass(self) -> str:
        return {
            "l2": "vector_l2_ops",
            "cosine": "vector_cosine_ops",
            "inner_product": "vector_ip_ops",
        }[self.value]


@dataclass(frozen=True)
class Limits:
    max_top_k: int = 1000
    max_items_per_message: int = 1000
    max_ids_per_request: int = 1000
    max_text_bytes: int = 1024  # label, uri, attribute value
    max_attribute_key_bytes: int = 128
    max_attributes: int = 64
    max_filter_labels: int = 1000


@dataclass(frozen=True)
class Collection:
    name: str
    dim: int
    metric: Metric
    m: int
    ef_construction: int
    model_fingerprint: str
    created_at: datetime

    @property
    def table(self) -> sql.Composable:
        return sql.Identifier(DATA_SCHEMA, self.name)

    @property
    def index_name(self) -> str:
        # Derived, not the collection name plus a suffix: that could pass 63 characters.
        return "hnsw_" + hashlib.sha1(self.name.encode()).hexdigest()[:20]

    @property
    def indexable(self) -> bool:
        return self.dim <= MAX_INDEXED_DIM


@dataclass
class Item:
    id: int
    vector: np.ndarray
    label: str = ""
    uri: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Filter:
    labels: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.labels or self.attributes)


@dataclass(frozen=True)
class Hit:
    id: int
    label: str
    uri: str
    attributes: dict[str, str]
    distance: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    exact: bool


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int = 0
    updated: int = 0


@dataclass(frozen=True)
class Stats:
    row_count: int
    index_present: bool
    m: int
    ef_construction: int
    table_bytes: int
    index_bytes: int
    pgvector_version: str


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class VectorStore:
    """The searcher's plain-Python core. Thread-safe; every method is one short transaction."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        limits: Limits = Limits(),
        default_ef_search: int = 400,
        exact_filter_rows: int = 20_000,
        maintenance_work_mem: str = "1GB",
    ) -> None:
        self.pool = pool
        self.limits = limits
        self.default_ef_search = default_ef_search
        # A filter matching at most this many rows is answered by an exact scan of those rows:
        # exact, and cheap with the label/attribute indexes. Above it, the HNSW index is used.
        self.exact_filter_rows = exact_filter_rows
        self.maintenance_work_mem = maintenance_work_mem
        self.pgvector_version = ""
        self.citus_version = ""  # set when the database is a Citus cluster
        self._iterative_scan = False
        self._collections: dict[str, tuple[float, Collection, bool]] = {}
        self._cache_lock = threading.Lock()

    def open(self) -> None:
        """Apply migrations and detect the pgvector version. Raises Unavailable when unreachable."""
        with self.pool.connection() as conn:
            version = apply_migrations(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                self.pgvector_version = cur.fetchone()[0]
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
                row = cur.fetchone()
                self.citus_version = row[0] if row else ""
            conn.rollback()
        if self.citus_version:
            logger.info("Citus %s: collection tables are distributed by id", self.citus_version)
        # Iterative index scans (pgvector 0.8) keep filtered HNSW results complete.
        self._iterative_scan = parse_version(self.pgvector_version) >= (0, 8, 0)
        logger.info("schema version %d, pgvector %s", version, self.pgvector_version)

    # -- collections -------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        dim: int,
        metric: Metric = Metric.L2,
        *,
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
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            try:
                cur.execute(
                    f"INSERT INTO {CATALOG_SCHEMA}.collections "
                    "(name, dim, metric, hnsw_m, hnsw_ef_construction, model_fingerprint) "
                    "VALUES (%s, %s, %s, %s, %s, %s) RETURNING created_at",
                    (name, dim, metric.value, m, ef_construction, model_fingerprint),
                )
            except pg_errors.UniqueViolation:
                raise AlreadyExists(f"collection {name!r} already exists") from None
            created_at = cur.fetchone()[0]
            collection = Collection(
                name, dim, metric, m, ef_construction, model_fingerprint, created_at
            )
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
            if collection.indexable:
                cur.execute(self._create_index_sql(collection))
            if self.citus_version:
                # Shards by id across the workers; each shard gets its own HNSW index, and
                # Citus runs a k-NN query on every shard and merges the results.
                cur.execute(
                    "SELECT create_distributed_table(%s, 'id')", (f'{DATA_SCHEMA}."{name}"',)
                )
        logger.info("created collection %s (dim %d, %s)", name, dim, metric.value)
        self._remember(collection, collection.indexable)
        return collection

    def get_collection(self, name: str) -> Collection:
        return self._collection(name, fresh=True)[0]

    def list_collections(self) -> list[Collection]:
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f"{_SELECT_COLLECTION} ORDER BY name")
            return [_collection_from_row(row) for row in cur.fetchall()]

    def drop_collection(self, name: str) -> None:
        validate_collection_name(name)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                f"DELETE FROM {CATALOG_SCHEMA}.collections WHERE name = %s RETURNING name", (name,)
            )
            if cur.fetchone() is None:
                raise NotFound(f"collection {name!r} does not exist")
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(DATA_SCHEMA, name))
            )
        with self._cache_lock:
            self._collections.pop(name, None)
        logger.info("dropped collection %s", name)

    # -- writing ------------------------------------------------------------------------------

    def begin_upsert(self, name: str) -> UpsertSession:
        """Start a bulk load: .write() each message, then .close() (builds a deferred index)."""
        collection, _ = self._collection(name, fresh=True)
        return UpsertSession(self, collection)

    def upsert(self, name: str, items: Sequence[Item]) -> UpsertCounts:
        """Insert or update items in one transaction (no index deferral)."""
        collection, _ = self._collection(name)
        return self._write(collection, items)[0]

    def _write(
        self, collection: Collection, items: Sequence[Item], *, try_plain_copy: bool = False
    ) -> tuple[UpsertCounts, bool]:
        """Write one message in one transaction; returns the counts and whether a plain COPY
        into the table did it (possible only when none of the ids exists yet)."""
        self.validate_items(collection, items)
        if not items:
            return UpsertCounts(), False
        payload = encode_binary_copy(items, collection.dim)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            if try_plain_copy:
                # A bulk load of new ids: COPY straight into the table (half the work of
                # staging and merging). Any existing id aborts it; the merge below then runs.
                cur.execute("SAVEPOINT plain_copy")
                try:
                    cur.copy_expert(
                        sql.SQL(
                            "COPY {} (id, label, uri, attributes, embedding) "
                            "FROM STDIN WITH (FORMAT binary)"
                        ).format(collection.table),
                        payload,
                    )
                    return UpsertCounts(inserted=len(items)), True
                except pg_errors.UniqueViolation:
                    cur.execute("ROLLBACK TO SAVEPOINT plain_copy")
                    payload.seek(0)
            cur.execute(
                "CREATE TEMP TABLE upsert_stage (id bigint, label text, uri text, "
                "attributes jsonb, embedding vector) ON COMMIT DROP"
            )
            cur.copy_expert("COPY upsert_stage FROM STDIN WITH (FORMAT binary)", payload)
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} AS t (id, label, uri, attributes, embedding) "
                    "SELECT id, label, uri, attributes, embedding FROM upsert_stage "
                    "ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label, uri = EXCLUDED.uri, "
                    "attributes = EXCLUDED.attributes, embedding = EXCLUDED.embedding "
                    "RETURNING (xmax = 0)"
                ).format(collection.table)
            )
            inserted = sum(1 for (was_insert,) in cur.fetchall() if was_insert)
        return UpsertCounts(inserted=inserted, updated=len(items) - inserted), False

    def validate_items(self, collection: Collection, items: Sequence[Item]) -> None:
        limits = self.limits
        if len(items) > limits.max_items_per_message:
            raise ResourceExhausted(
                f"{len(items)} items in one message; the limit is {limits.max_items_per_message} "
                "(max_items_per_message)"
            )
        seen: set[int] = set()
        for index, item in enumerate(items):
            where = f"item {index} (id {item.id})"
            if not 0 <= item.id <= MAX_ID:
                raise InvalidArgument(f"{where}: id must be between 0 and 2^63-1")
            if item.id in seen:
                raise InvalidArgument(f"{where}: id appears twice in one message")
            seen.add(item.id)
            _check_vector(item.vector, collection, where)
            _check_text(item.label, "label", limits.max_text_bytes, where)
            _check_text(item.uri, "uri", limits.max_text_bytes, where)
            _check_attributes(item.attributes, limits, where)

    def build_index(self, collection: Collection) -> None:
        """Create the HNSW index if missing, then ANALYZE: used after a deferred bulk load."""
        if not collection.indexable:
            return
        started = time.monotonic()
        with self.pool.connection() as conn:
            old_autocommit = conn.autocommit
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    # Serialise builds of one collection across searchers.
                    cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (collection.name,))
                    try:
                        cur.execute(
                            sql.SQL("SET maintenance_work_mem = {}").format(
                                sql.Literal(self.maintenance_work_mem)
                            )
                        )
                        # The statement timeout bounds requests; a build's time grows with the
                        # data (a minute or more for 100k rows) and must not be cut short.
                        cur.execute("SET statement_timeout = 0")
                        cur.execute(self._create_index_sql(collection))
                        cur.execute(sql.SQL("ANALYZE {}").format(collection.table))
                    finally:
                        cur.execute("RESET maintenance_work_mem; RESET statement_timeout")
                        cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (collection.name,))
            finally:
                conn.autocommit = old_autocommit
        self._remember(collection, True)
        logger.info("built HNSW index of %s in %.1f s", collection.name, time.monotonic() - started)

    def _prepare_load(self, collection: Collection) -> tuple[bool, bool]:
        """Before an Upsert stream: (whether the index build is deferred to its end, whether the
        collection is empty). An empty collection's index is dropped for the load. A missing
        index (a bulk load whose searcher was killed before building it) is built at the end."""
        if not collection.indexable:
            return False, False
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(collection.table)
            )
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(collection.table))
            if cur.fetchone()[0]:
                cur.execute(
                    "SELECT to_regclass(%s) IS NULL",
                    (f"{DATA_SCHEMA}.{collection.index_name}",),
                )
                index_missing: bool = cur.fetchone()[0]
                if index_missing:
                    logger.warning(
                        "%s has rows but no index (an interrupted bulk load?): building it at "
                        "the end of this stream",
                        collection.name,
                    )
                return index_missing, False
            cur.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(DATA_SCHEMA, collection.index_name)
                )
            )
        self._remember(collection, False)
        return True, True

    def _create_index_sql(self, collection: Collection) -> sql.Composable:
        return sql.SQL(
            "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {}) "
            "WITH (m = {}, ef_construction = {})"
        ).format(
            sql.Identifier(collection.index_name),
            collection.table,
            sql.SQL(collection.metric.opclass),
            sql.Literal(collection.m),
            sql.Literal(collection.ef_construction),
        )

    # -- reading ------------------------------------------------------------------------------

    def search(
        self,
        name: str,
        query: np.ndarray | int,
        top_k: int,
        *,
        filter: Filter = Filter(),
        ef_search: int = 0,
        exact: bool = False,
    ) -> SearchResult:
        """The top_k items nearest to a vector (or to the stored item with id `query`).

        Always returns min(top_k, matching items) hits. Filters that match few rows are answered
        exactly; otherwise the HNSW candidate list is widened (iterative scans on pgvector 0.8+)
        and an exact scan is the fallback whenever the index returns too few rows.
        """
        collection, has_index = self._collection(name)
        if not 1 <= top_k <= self.limits.max_top_k:
            raise InvalidArgument(
                f"top_k must be between 1 and {self.limits.max_top_k} (max_top_k), got {top_k}"
            )
        if ef_search < 0 or ef_search > MAX_EF_SEARCH:
            raise InvalidArgument(
                f"ef_search must be between 0 and {MAX_EF_SEARCH}, got {ef_search}"
            )
        self._check_filter(filter)
        vector: np.ndarray | None = None
        if not isinstance(query, int):
            vector = np.asarray(query, dtype=np.float32)
            _check_vector(vector, collection, "query")
        where, params = _where_clause(filter)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            if vector is None:
                vector = self._stored_vector(cur, collection, int(query))
            use_index = has_index and not exact
            if use_index and filter:
                use_index = self._count_matching(cur, collection, where, params) > (
                    self.exact_filter_rows
                )
            hits: list[Hit] = []
            if use_index:
                ef = max(ef_search or self.default_ef_search, top_k)
                if filter and not self._iterative_scan:
                    # Without iterative scans, HNSW returns ef_search candidates and the filter
                    # runs after: widen the list to the most pgvector allows.
                    ef = MAX_EF_SEARCH
                settings = "SET LOCAL hnsw.ef_search = %s"
                if filter and self._iterative_scan:
                    settings += "; SET LOCAL hnsw.iterative_scan = strict_order"
                cur.execute(settings, (min(ef, MAX_EF_SEARCH),))
                hits = self._nearest(cur, collection, vector, top_k, where, params)
                # The index can return fewer rows than exist (filters, deleted rows): check.
                if len(hits) < top_k and self._count_matching(
                    cur, collection, where, params, at_most=top_k
                ) > len(hits):
                    use_index = False
            if not use_index:
                cur.execute("SET LOCAL enable_indexscan = off")
                hits = self._nearest(cur, collection, vector, top_k, where, params)
        return SearchResult(hits=hits, exact=not use_index)

    def _nearest(
        self,
        cur: Any,
        collection: Collection,
        vector: np.ndarray,
        top_k: int,
        where: sql.Composable,
        params: list[Any],
    ) -> list[Hit]:
        operator = sql.SQL(collection.metric.operator)
        cur.execute(
            sql.SQL(
                "SELECT id, label, uri, attributes, embedding {} %s AS distance FROM {} {} "
                "ORDER BY distance LIMIT %s"
            ).format(operator, collection.table, where),
            [vector_literal(vector), *params, top_k],
        )
        return [Hit(row[0], row[1], row[2], row[3], float(row[4])) for row in cur.fetchall()]

    def _count_matching(
        self,
        cur: Any,
        collection: Collection,
        where: sql.Composable,
        params: list[Any],
        at_most: int | None = None,
    ) -> int:
        limit = (self.exact_filter_rows if at_most is None else at_most) + 1
        cur.execute(
            sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} {} LIMIT %s) AS matching").format(
                collection.table, where
            ),
            [*params, limit],
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
        return _as_array(row[0])

    def get(
        self, name: str, ids: Sequence[int], *, include_vectors: bool = False
    ) -> tuple[list[Item], list[int]]:
        """The items with these ids (in request order) and the ids that were not found."""
        collection, _ = self._collection(name)
        if len(ids) > self.limits.max_ids_per_request:
            raise ResourceExhausted(
                f"{len(ids)} ids in one request; the limit is {self.limits.max_ids_per_request} "
                "(max_ids_per_request)"
            )
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE id = ANY(%s)").format(
                    _item_columns(include_vectors), collection.table
                ),
                (list(ids),),
            )
            found = {item.id: item for item in map(_item_from_row, cur.fetchall())}
        items = [found[i] for i in dict.fromkeys(ids) if i in found]
        return items, [i for i in ids if i not in found]

    def list_items(
        self, name: str, *, after_id: int | None, limit: int, include_vectors: bool = False
    ) -> list[Item]:
        """Up to `limit` items with ids above `after_id` (from the start when None), by id."""
        collection, _ = self._collection(name)
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
            return list(map(_item_from_row, cur.fetchall()))

    def delete(self, name: str, *, ids: Sequence[int] = (), filter: Filter = Filter()) -> int:
        collection, _ = self._collection(name)
        if bool(ids) == bool(filter):
            raise InvalidArgument("give either ids or a non-empty filter to delete, not both")
        if len(ids) > self.limits.max_ids_per_request:
            raise ResourceExhausted(
                f"{len(ids)} ids in one request; the limit is {self.limits.max_ids_per_request} "
                "(max_ids_per_request)"
            )
        self._check_filter(filter)
        where: sql.Composable
        if ids:
            where, params = sql.SQL("WHERE id = ANY(%s)"), [list(ids)]
        else:
            where, params = _where_clause(filter)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} {}").format(collection.table, where), params)
            deleted: int = cur.rowcount
        return deleted

    def stats(self, name: str) -> Stats:
        collection, _ = self._collection(name)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {0}), to_regclass(%s) IS NOT NULL, "
                    "pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)"
                ).format(collection.table),
                (
                    f"{DATA_SCHEMA}.{collection.index_name}",
                    f'{DATA_SCHEMA}."{collection.name}"',
                    f'{DATA_SCHEMA}."{collection.name}"',
                ),
            )
            rows, has_index, table_bytes, index_bytes = cur.fetchone()
        return Stats(
            row_count=rows,
            index_present=has_index,
            m=collection.m,
            ef_construction=collection.ef_construction,
            table_bytes=table_bytes,
            index_bytes=index_bytes,
            pgvector_version=self.pgvector_version,
        )

    # -- internals ----------------------------------------------------------------------------

    # Catalogue entries are cached briefly: a search should not pay a catalogue round trip, and
    # another searcher's drop or deferred index build is seen within this many seconds.
    CACHE_SECONDS = 2.0

    def _collection(self, name: str, *, fresh: bool = False) -> tuple[Collection, bool]:
        """The collection and whether its HNSW index exists; "images" is made on first use."""
        name = name or DEFAULT_COLLECTION
        validate_collection_name(name)
        with self._cache_lock:
            cached = self._collections.get(name)
        if cached is not None and not fresh and time.monotonic() - cached[0] < self.CACHE_SECONDS:
            return cached[1], cached[2]
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f"{_SELECT_COLLECTION} WHERE name = %s", (name,))
            row = cur.fetchone()
            if row is not None:
                collection = _collection_from_row(row)
                cur.execute(
                    "SELECT to_regclass(%s) IS NOT NULL",
                    (f"{DATA_SCHEMA}.{collection.index_name}",),
                )
                has_index: bool = cur.fetchone()[0]
        if row is None:
            if name != DEFAULT_COLLECTION:
                raise NotFound(f"collection {name!r} does not exist")
            try:
                collection = self.create_collection(DEFAULT_COLLECTION, DEFAULT_DIM)
            except AlreadyExists:  # another request created it first
                return self._collection(name, fresh=True)
            has_index = collection.indexable
        self._remember(collection, has_index)
        return collection, has_index

    def _remember(self, collection: Collection, has_index: bool) -> None:
        with self._cache_lock:
            self._collections[collection.name] = (time.monotonic(), collection, has_index)

    def _check_filter(self, filter: Filter) -> None:
        limits = self.limits
        if len(filter.labels) > limits.max_filter_labels:
            raise ResourceExhausted(
                f"{len(filter.labels)} labels in a filter; the limit is {limits.max_filter_labels} "
                "(max_filter_labels)"
            )
        for label in filter.labels:
            _check_text(label, "filter label", limits.max_text_bytes, "filter")
        _check_attributes(dict(filter.attributes), limits, "filter")


class UpsertSession:
    """One Upsert stream. Into an empty collection, the HNSW index is dropped for the load and
    built once at close(): building after loading is far faster than inserting into the graph."""

    def __init__(self, store: VectorStore, collection: Collection) -> None:
        self.store = store
        self.collection = collection
        self.counts = UpsertCounts()
        self.messages = 0
        self._index_deferred, empty = store._prepare_load(collection)
        # Loading into an empty collection: messages are most likely all new ids.
        self._plain_copy = empty
        if empty:
            logger.info("bulk load into empty %s: index build deferred", collection.name)

    def write(self, items: Sequence[Item]) -> UpsertCounts:
        counts, plain = self.store._write(self.collection, items, try_plain_copy=self._plain_copy)
        if items and not plain:
            # After the first conflict, stop trying: this stream is updating existing rows.
            self._plain_copy = False
        self.counts = UpsertCounts(
            self.counts.inserted + counts.inserted, self.counts.updated + counts.updated
        )
        self.messages += 1
        return counts

    def close(self) -> None:
        if self._index_deferred:
            self._index_deferred = False
            self.store.build_index(self.collection)


# -- validation and encoding helpers ------------------------------------------------------------


def validate_collection_name(name: str) -> None:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            f"invalid collection name {name[:80]!r}: use 1-63 lower case letters, digits and "
            "underscores, starting with a letter"
        )


def _check_vector(vector: np.ndarray, collection: Collection, where: str) -> None:
    if vector.ndim != 1 or vector.shape[0] != collection.dim:
        raise InvalidArgument(
            f"{where}: vector has {vector.size} values; collection {collection.name!r} has "
            f"dim {collection.dim}"
        )
    if not np.isfinite(vector).all():
        raise InvalidArgument(f"{where}: vector contains NaN or infinity")


def _check_text(
    value: str, what: str, max_bytes: int, where: str, limit_name: str = "max_text_bytes"
) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"{where}: {what} is {size} bytes; the limit is {max_bytes} ({limit_name})"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{where}: {what} contains a NUL character")


def _check_attributes(attributes: dict[str, str], limits: Limits, where: str) -> None:
    if len(attributes) > limits.max_attributes:
        raise InvalidArgument(
            f"{where}: {len(attributes)} attributes; the limit is {limits.max_attributes} "
            "(max_attributes)"
        )
    for key, value in attributes.items():
        _check_text(
            key, "attribute key", limits.max_attribute_key_bytes, where, "max_attribute_key_bytes"
        )
        _check_text(value, f"attribute {key[:40]!r}", limits.max_text_bytes, where)


def _where_clause(filter: Filter) -> tuple[sql.Composable, list[Any]]:
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if filter.labels:
        conditions.append(sql.SQL("label = ANY(%s)"))
        params.append(list(filter.labels))
    if filter.attributes:
        conditions.append(sql.SQL("attributes @> %s::jsonb"))
        params.append(json.dumps(dict(filter.attributes)))
    if not conditions:
        return sql.SQL(""), []
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions), params


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)


def encode_binary_copy(items: Iterable[Item], dim: int) -> io.BytesIO:
    """Rows (id, label, uri, attributes, embedding) in PostgreSQL's binary COPY format.

    Vectors use pgvector's binary form: int16 dim, int16 unused, then big-endian float32s.
    """
    out = io.BytesIO()
    out.write(_COPY_HEADER)
    vector_header = struct.pack("!ihh", 4 + 4 * dim, dim, 0)
    for item in items:
        label = item.label.encode()
        uri = item.uri.encode()
        attributes = b"\x01" + json.dumps(item.attributes, ensure_ascii=False).encode()
        out.write(struct.pack("!hiq", 5, 8, item.id))
        for value in (label, uri, attributes):
            out.write(struct.pack("!i", len(value)))
            out.write(value)
        out.write(vector_header)
        # tobytes() of the big-endian copy is what keeps this fast
        out.write(np.asarray(item.vector, dtype=">f4").tobytes())
    out.write(_COPY_TRAILER)
    out.seek(0)
    return out


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form of a float32 vector. Nine significant digits round-trip every
    float32 exactly, and formatting them is twice as fast as pgvector-python's adapter, whose
    cost was a third of a search's CPU time in the searcher."""
    return "[" + ",".join(map("{:.9g}".format, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def _item_columns(include_vectors: bool) -> sql.Composable:
    """The columns _item_from_row reads; the vector only when asked for (4 KB a row)."""
    return sql.SQL("id, label, uri, attributes, {}").format(
        sql.SQL("embedding" if include_vectors else "NULL")
    )


def _item_from_row(row: Sequence[Any]) -> Item:
    vector = _as_array(row[4]) if row[4] is not None else np.empty(0, np.float32)
    return Item(id=row[0], label=row[1], uri=row[2], attributes=row[3], vector=vector)


def _as_array(value: Any) -> np.ndarray:
    """pgvector's psycopg2 adapter returns numpy arrays or Vector objects, by version."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


_SELECT_COLLECTION = (
    "SELECT name, dim, metric, hnsw_m, hnsw_ef_construction, model_fingerprint, created_at "
    f"FROM {CATALOG_SCHEMA}.collections"
)


def _collection_from_row(row: Sequence[Any]) -> Collection:
    return Collection(row[0], row[1], Metric(row[2]), row[3], row[4], row[5], row[6])
