"""The catalogue of collections: what each one is (dimension, metric, index kind) and what its
index's last build left (generation, parameters in force, measured recall, search effort)."""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg2 import errors as pg_errors
from psycopg2 import sql

from imgsearch import defaults
from imgsearch.errors import AlreadyExists, InvalidArgument, NotFound
from imgsearch.names import check_collection_name
from searcher.pool import ConnectionPool
from searcher.schema import CATALOG_SCHEMA, DATA_SCHEMA, NO_CELL

logger = logging.getLogger(__name__)

# The default collection is made on first use with the default model's vectors (SqueezeNet 1.1).
DEFAULT_DIM = 1000


class Metric(enum.Enum):
    L2 = "l2"
    COSINE = "cosine"
    INNER_PRODUCT = "inner_product"

    @property
    def operator(self) -> str:
        return {"l2": "<->", "cosine": "<=>", "inner_product": "<#>"}[self.value]


class IndexKind(enum.Enum):
    VECTOR = "vector"  # HNSW over the full float32 vectors
    HALFVEC = "halfvec"  # HNSW over half-precision copies, candidates re-ranked exactly
    BINARY = "binary"  # HNSW over bit codes of the centred vectors, candidates re-ranked exactly


@dataclass(frozen=True)
class Collection:
    """A collection as the catalogue records it."""

    name: str
    dim: int
    metric: Metric
    kind: IndexKind
    # HNSW parameters in force: as created, or raised by a repair after a poor build.
    m: int
    ef_construction: int
    model_fingerprint: str
    created_at: datetime
    # Every build makes a new generation (index and, for BINARY, its quantizer function), so a
    # searcher still holding the previous one never meets a half-replaced index.
    generation: int = 1
    # Search effort in force; 0 means the server's default. Raised when a build's measured
    # recall stays below the floor.
    ef_search: int = 0
    candidates: int = 0
    # Rows the BINARY quantizer (centre and spread) was fitted on.
    quantizer_rows: int = 0
    built_rows: int = 0
    built_at: datetime | None = None
    build_seconds: float = 0.0
    recall: float | None = None  # recall@10 of the index on a sample, after its last build
    recall_sample: int = 0
    recall_measured_at: datetime | None = None
    index_note: str = ""
    # Rows of segment <= index_segment are in the index (its predicate); the others are fresh:
    # searched exactly until folded in. Writers give new and updated rows growing_segment.
    index_segment: int = 0
    growing_segment: int = 1
    # The segment whose rows carry coarse cells (searcher.cells): the growing one since the
    # last build that fitted centroids; 0 when none did (every fresh row is scanned).
    cells_segment: int = 0
    # Graphs by coarse cell (searcher.cell_graphs): 0, one graph over the indexed rows; else one
    # graph per cell of the cells of cells_segment (the same set every build), and how many of
    # its query's nearest cells' graphs a search walks.
    graph_cells: int = 0
    graph_probes: int = 0
    # Graphs by cell whose rows are sorted finer (searcher.cells.Cells.fine): a row's cell is
    # its graph × fine_cells + its fine cell, and a graph holds a range of cells; 0: its graph.
    fine_cells: int = 0
    # A named vector's table: the collection whose items it belongs to, and the vector's name
    # (see named_vector_table); both empty for a collection.
    parent: str = ""
    vector_name: str = ""

    @property
    def described(self) -> str:
        """What a message to a person calls it: the table of a named vector is not theirs."""
        if self.parent:
            return f"vector {self.vector_name!r} of collection {self.parent!r}"
        return f"collection {self.name!r}"

    @property
    def indexed(self) -> sql.Composable:
        """The condition of the rows the current index holds: with one graph its predicate, as
        a query must say it for the planner to use the index (graphs by cell: in_graph)."""
        if self.graph_cells:
            return sql.SQL("(segment <= {} AND cell <> {})").format(
                sql.Literal(self.index_segment), sql.Literal(NO_CELL)
            )
        return sql.SQL("segment <= {}").format(sql.Literal(self.index_segment))

    def in_graph(self, cell: int | sql.Composable | None) -> sql.Composable:
        """The predicate of one graph: the whole index's (cell None), or of a cell's graph (the
        cell, or a placeholder bound to it)."""
        if cell is None:
            return self.indexed
        segment = sql.Literal(self.index_segment)
        if not self.fine_cells:
            value = sql.Literal(cell) if isinstance(cell, int) else cell
            return sql.SQL("segment <= {} AND cell = {}").format(segment, value)
        # Its range of finer cells. A placeholder's bounds are folded to constants when planned
        # with its value (prepared.py), so the planner still proves the partial index applies.
        first: sql.Composable
        end: sql.Composable
        if isinstance(cell, int):
            first = sql.Literal(cell * self.fine_cells)
            end = sql.Literal((cell + 1) * self.fine_cells)
        else:
            per_graph = sql.Literal(self.fine_cells)
            first = sql.SQL("{} * {}").format(cell, per_graph)
            end = sql.SQL("({} + 1) * {}").format(cell, per_graph)
        return sql.SQL("segment <= {} AND cell >= {} AND cell < {}").format(segment, first, end)

    def graph_of(self, cell: int) -> int:
        """The graph by cell that holds a row of this cell."""
        return cell // self.fine_cells if self.fine_cells else cell

    @property
    def graph_of_cell(self) -> sql.Composable:
        """graph_of, in SQL, of a row's cell."""
        if self.fine_cells:
            return sql.SQL("cell / {}").format(sql.Literal(self.fine_cells))
        return sql.SQL("cell")

    @property
    def fresh(self) -> sql.Composable:
        """The condition of the rows not (yet) in the current index (graphs by cell: also rows
        of indexed segments written without a cell, which no graph takes)."""
        if self.graph_cells:
            return sql.SQL("(segment > {} OR cell = {})").format(
                sql.Literal(self.index_segment), sql.Literal(NO_CELL)
            )
        return sql.SQL("segment > {}").format(sql.Literal(self.index_segment))

    @property
    def graphs(self) -> list[int | None]:
        """The current index's graphs by their cell (None: the one graph)."""
        return list(range(self.graph_cells)) if self.graph_cells else [None]

    @property
    def half_precision_index(self) -> bool:
        """Whether the index holds half-precision copies (values beyond ±65504 cannot fit)."""
        return self.kind is IndexKind.HALFVEC

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(DATA_SCHEMA, self.name)

    @property
    def qualified_table(self) -> str:
        """The table as a regclass text, for functions that take one."""
        return f'{DATA_SCHEMA}."{self.name}"'

    def index_name(self, generation: int | None = None, cell: int | None = None) -> str:
        # Derived, not the collection name plus a suffix: that could pass 63 characters.
        # Generation 0 is the one name collections had before generations existed.
        generation = self.generation if generation is None else generation
        base = "hnsw_" + _name_hash(self.name)
        name = base if generation == 0 else f"{base}_{generation}"
        return name if cell is None else f"{name}_c{cell}"

    def index_names(self, generation: int | None = None) -> list[str]:
        """The names of a generation's graphs (of this collection's graph cells)."""
        return [self.index_name(generation, cell) for cell in self.graphs]

    @property
    def qualified_index(self) -> str:
        """The current index (graphs by cell: the first cell's) as a regclass text."""
        return f"{DATA_SCHEMA}.{self.index_names()[0]}"

    def quantizer_name(self, generation: int | None = None) -> str:
        generation = self.generation if generation is None else generation
        return f"{quantizer_prefix(self.name)}{generation}"


# Whether an index (by its qualified name) exists and is valid. An index whose CONCURRENTLY
# build was interrupted exists but is invalid: the planner never uses it.
INDEX_IS_VALID = (
    "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)), false)"
)


# The catalogue name (and table) of a collection's named vector: outside the names collections
# may take (it holds a dot), and short whatever the collection's name.
NAMED_VECTOR_TABLE = re.compile(r"[a-z][a-z0-9_]{0,30}\.[0-9a-f]{20}")
VECTOR_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")


def named_vector_table(collection: str, vector: str) -> str:
    return f"{vector}.{_name_hash(collection)}"


def check_vector_name(name: str) -> None:
    if not VECTOR_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid vector name {name[:80]!r}: use 1-31 lower case letters, digits and "
            "underscores, starting with a letter"
        )


def fresh_index_name(name: str) -> str:
    """The btree index on a collection's (segment, cell) columns (as migration 4 names it)."""
    return "fresh_" + hashlib.md5(name.encode()).hexdigest()


def quantizer_prefix(name: str) -> str:
    return f"quantize_{_name_hash(name)}_"


def _name_hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:20]


# The catalogue's columns and the Collection fields they fill, in order.
_FIELD_OF_COLUMN = {
    "name": "name",
    "dim": "dim",
    "metric": "metric",
    "index_kind": "kind",
    "hnsw_m": "m",
    "hnsw_ef_construction": "ef_construction",
    "model_fingerprint": "model_fingerprint",
    "created_at": "created_at",
    "index_generation": "generation",
    "search_ef": "ef_search",
    "search_candidates": "candidates",
    "quantizer_rows": "quantizer_rows",
    "built_rows": "built_rows",
    "built_at": "built_at",
    "build_seconds": "build_seconds",
    "recall": "recall",
    "recall_sample": "recall_sample",
    "recall_measured_at": "recall_measured_at",
    "index_note": "index_note",
    "index_segment": "index_segment",
    "growing_segment": "growing_segment",
    "cells_segment": "cells_segment",
    "graph_cells": "graph_cells",
    "graph_probes": "graph_probes",
    "graph_fine_cells": "fine_cells",
    "parent": "parent",
    "vector_name": "vector_name",
}
_SELECT = f"SELECT {', '.join(_FIELD_OF_COLUMN)} FROM {CATALOG_SCHEMA}.collections"
# Columns that builds and recall checks may set (record()): all but what a collection is.
_RECORDED = frozenset(_FIELD_OF_COLUMN).union({"quantizer_centre", "quantizer_spread"}) - {
    "name",
    "dim",
    "metric",
    "index_kind",
    "model_fingerprint",
    "created_at",
    "parent",
    "vector_name",
}


def _from_row(row: Sequence[Any]) -> Collection:
    values = dict(zip(_FIELD_OF_COLUMN.values(), row, strict=True))
    return Collection(
        **values
        | {
            "metric": Metric(values["metric"]),
            "kind": IndexKind(values["kind"]),
            "built_rows": values["built_rows"] or 0,  # NULL before the first build
            "build_seconds": values["build_seconds"] or 0.0,
            "parent": values["parent"] or "",
        }
    )


class Catalogue:
    """Collections as the database records them, cached briefly: a search should not pay a
    catalogue round trip, and another searcher's drop or build is seen within CACHE_SECONDS."""

    CACHE_SECONDS = 2.0

    def __init__(self, pool: ConnectionPool, *, create_default: Callable[[], Collection]) -> None:
        self.pool = pool
        self._create_default = create_default
        self._cache: dict[str, tuple[float, Collection, bool]] = {}
        self._lock = threading.Lock()

    def create(self, cur: Any, collection: Collection, *, distributed: bool) -> Collection:
        """Record a new collection and create its table, inside the caller's transaction; the
        collection as recorded. `distributed`: a Citus cluster, sharded by id."""
        created = replace(collection, created_at=self._insert(cur, collection))
        table = created.table
        cur.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, label text NOT NULL DEFAULT '', "
                "uri text NOT NULL DEFAULT '', attributes jsonb NOT NULL DEFAULT '{{}}', "
                "embedding vector({}) NOT NULL, segment integer NOT NULL DEFAULT 0, "
                "cell integer NOT NULL DEFAULT {})"
            ).format(table, sql.Literal(created.dim), sql.Literal(NO_CELL))
        )
        # Finds the fresh rows (the few above index_segment), and those of a few cells, without
        # reading the others.
        cur.execute(
            sql.SQL("CREATE INDEX {} ON {} (segment, cell)").format(
                sql.Identifier(fresh_index_name(created.name)), table
            )
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
        if distributed:
            # Shards by id across the workers; each shard gets its own HNSW index, and Citus
            # runs a k-NN query on every shard and merges the results.
            cur.execute("SELECT create_distributed_table(%s, 'id')", (created.qualified_table,))
        return created

    def drop(self, cur: Any, name: str) -> list[str]:
        """Remove a collection's row and its table, and those of its named vectors, inside the
        caller's transaction; the names of the named vectors' tables."""
        tables = [c.name for c in self.named_vectors(cur, name)]
        self._delete(cur, name)  # the named vectors' rows go with it (ON DELETE CASCADE)
        for table in [name, *tables]:
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(DATA_SCHEMA, table))
            )
        for table in tables:
            self.forget(table)
        return tables

    def named_vectors(self, cur: Any, name: str) -> list[Collection]:
        """The tables of a collection's named vectors, by vector name."""
        cur.execute(f"{_SELECT} WHERE parent = %s ORDER BY vector_name", (name,))
        return [_from_row(row) for row in cur.fetchall()]

    def _insert(self, cur: Any, collection: Collection) -> datetime:
        """Add a collection's row inside the caller's transaction; returns its created_at."""
        try:
            cur.execute(
                f"INSERT INTO {CATALOG_SCHEMA}.collections (name, dim, metric, index_kind, hnsw_m, "
                "hnsw_ef_construction, model_fingerprint, index_generation, index_segment, "
                "growing_segment, parent, vector_name) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s) RETURNING created_at",
                (
                    collection.name,
                    collection.dim,
                    collection.metric.value,
                    collection.kind.value,
                    collection.m,
                    collection.ef_construction,
                    collection.model_fingerprint,
                    collection.generation,
                    collection.index_segment,
                    collection.growing_segment,
                    collection.parent or None,
                    collection.vector_name,
                ),
            )
        except pg_errors.UniqueViolation:
            raise AlreadyExists(f"collection {collection.name!r} already exists") from None
        created_at: datetime = cur.fetchone()[0]
        return created_at

    def get(self, name: str, *, fresh: bool = False) -> tuple[Collection, bool]:
        """The collection and whether its index exists and is valid (searches can use it);
        "images" is made on first use."""
        name = name or defaults.COLLECTION
        if not NAMED_VECTOR_TABLE.fullmatch(name):  # the upkeep's, by their catalogue names
            check_collection_name(name)
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and not fresh and time.monotonic() - cached[0] < self.CACHE_SECONDS:
            return cached[1], cached[2]
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f"{_SELECT} WHERE name = %s", (name,))
            row = cur.fetchone()
            if row is not None:
                collection = _from_row(row)
                cur.execute(INDEX_IS_VALID, (collection.qualified_index,))
                has_index: bool = cur.fetchone()[0]
        if row is None:
            if name != defaults.COLLECTION:
                raise NotFound(f"collection {name!r} does not exist")
            try:
                collection = self._create_default()
            except AlreadyExists:  # another request created it first
                return self.get(name, fresh=True)
            return self.get(name, fresh=True)
        self.remember(collection, has_index)
        return collection, has_index

    def list(self) -> list[Collection]:
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f"{_SELECT} ORDER BY name")
            return [_from_row(row) for row in cur.fetchall()]

    def _delete(self, cur: Any, name: str) -> None:
        cur.execute(
            f"DELETE FROM {CATALOG_SCHEMA}.collections WHERE name = %s RETURNING name", (name,)
        )
        if cur.fetchone() is None:
            raise NotFound(f"collection {name!r} does not exist")

    def record(self, cur: Any, name: str, **columns: Any) -> None:
        """Set build and recall columns of a collection inside the caller's transaction."""
        unknown = set(columns) - _RECORDED
        if unknown:
            raise ValueError(f"not catalogue columns a build may set: {sorted(unknown)}")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(column)) for column in columns
        )
        cur.execute(
            sql.SQL("UPDATE {}.collections SET {} WHERE name = %s").format(
                sql.Identifier(CATALOG_SCHEMA), assignments
            ),
            [*columns.values(), name],
        )
        self.forget(name)

    def quantizer(self, cur: Any, name: str) -> tuple[Any, Any]:
        """The BINARY quantizer's (centre, spread) as stored, or (None, None)."""
        cur.execute(
            f"SELECT quantizer_centre, quantizer_spread FROM {CATALOG_SCHEMA}.collections "
            "WHERE name = %s",
            (name,),
        )
        row = cur.fetchone()
        return (row[0], row[1]) if row else (None, None)

    def remember(self, collection: Collection, has_index: bool) -> None:
        with self._lock:
            self._cache[collection.name] = (time.monotonic(), collection, has_index)

    def forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)
