"""Writing items: validation, binary COPY, and the bulk-load session of one Upsert stream."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from imgsearch.errors import InvalidArgument, ResourceExhausted
from searcher.catalogue import Collection, IndexKind
from searcher.indexes import IndexBuilder
from searcher.pgvector_io import Item, encode_binary_copy
from searcher.pool import ConnectionPool

logger = logging.getLogger(__name__)

MAX_ID = 2**63 - 1
HALF_MAX = 65504.0  # the largest finite half-precision value


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
class UpsertCounts:
    inserted: int = 0
    updated: int = 0


class Loader:
    def __init__(self, pool: ConnectionPool, builder: IndexBuilder, limits: Limits) -> None:
        self.pool = pool
        self.builder = builder
        self.limits = limits

    def write(
        self, collection: Collection, items: Sequence[Item], *, try_plain_copy: bool = False
    ) -> tuple[UpsertCounts, bool]:
        """Write one message in one transaction; returns the counts and whether a plain COPY
        into the table did it (possible only when none of the ids exists yet)."""
        validate_items(collection, items, self.limits)
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

    def prepare_load(self, collection: Collection, has_index: bool) -> tuple[bool, bool]:
        """Before an Upsert stream: (whether the index build is deferred to its end, whether the
        collection is empty). An empty collection's index is dropped for the load. A missing
        index (a bulk load whose searcher was killed before building it, or a BINARY
        collection that never had rows) is built at the end."""
        if not self.builder.indexable(collection):
            return False, False
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(collection.table)
            )
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(collection.table))
            if cur.fetchone()[0]:
                if not has_index:
                    logger.warning(
                        "%s has rows but no index (an interrupted bulk load?): building it at "
                        "the end of this stream",
                        collection.name,
                    )
                return not has_index, False
            self.builder.drop_for_load(cur, collection)
        return True, True


class UpsertSession:
    """One Upsert stream. Into an empty collection, the HNSW index is dropped for the load and
    built once at close(): building after loading is far faster than inserting into the graph."""

    def __init__(
        self,
        loader: Loader,
        collection: Collection,
        has_index: bool,
        *,
        on_close: Callable[[UpsertSession, bool], None],
    ) -> None:
        self.loader = loader
        self.collection = collection
        self.counts = UpsertCounts()
        self.messages = 0
        self._on_close = on_close
        self._index_deferred, empty = loader.prepare_load(collection, has_index)
        # New ids are COPYed straight into the table; the first message holding an existing id
        # is rolled back to a savepoint and merged instead, and so is the rest of the stream.
        self._plain_copy = True
        if empty:
            logger.info("bulk load into empty %s: index build deferred", collection.name)

    def write(self, items: Sequence[Item]) -> UpsertCounts:
        counts, plain = self.loader.write(self.collection, items, try_plain_copy=self._plain_copy)
        if items and not plain:
            # After the first conflict, stop trying: this stream is updating existing rows.
            self._plain_copy = False
        self.counts = UpsertCounts(
            self.counts.inserted + counts.inserted, self.counts.updated + counts.updated
        )
        self.messages += 1
        return counts

    def close(self) -> None:
        deferred, self._index_deferred = self._index_deferred, False
        self._on_close(self, deferred)


def validate_items(collection: Collection, items: Sequence[Item], limits: Limits) -> None:
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
        check_vector(item.vector, collection, where)
        check_text(item.label, "label", limits.max_text_bytes, where)
        check_text(item.uri, "uri", limits.max_text_bytes, where)
        check_attributes(item.attributes, limits, where)


def check_vector(vector: np.ndarray, collection: Collection, where: str) -> None:
    if vector.ndim != 1 or vector.shape[0] != collection.dim:
        raise InvalidArgument(
            f"{where}: vector has {vector.size} values; collection {collection.name!r} has "
            f"dim {collection.dim}"
        )
    if not np.isfinite(vector).all():
        raise InvalidArgument(f"{where}: vector contains NaN or infinity")
    if collection.kind is IndexKind.HALFVEC and np.abs(vector).max(initial=0.0) > HALF_MAX:
        raise InvalidArgument(
            f"{where}: vector has a value beyond ±{HALF_MAX:g}, which half precision cannot "
            f"hold; collection {collection.name!r} has a HALFVEC index (use VECTOR or BINARY "
            "for such vectors)"
        )


def check_text(
    value: str, what: str, max_bytes: int, where: str, limit_name: str = "max_text_bytes"
) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"{where}: {what} is {size} bytes; the limit is {max_bytes} ({limit_name})"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{where}: {what} contains a NUL character")


def check_attributes(attributes: dict[str, str], limits: Limits, where: str) -> None:
    if len(attributes) > limits.max_attributes:
        raise InvalidArgument(
            f"{where}: {len(attributes)} attributes; the limit is {limits.max_attributes} "
            "(max_attributes)"
        )
    for key, value in attributes.items():
        check_text(
            key, "attribute key", limits.max_attribute_key_bytes, where, "max_attribute_key_bytes"
        )
        check_text(value, f"attribute {key[:40]!r}", limits.max_text_bytes, where)
