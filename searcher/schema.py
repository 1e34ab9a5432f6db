"""The searcher's database schema: versioned migrations, applied once under an advisory lock."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Catalogue and bookkeeping live in schema "imgsearch"; one table per collection lives in
# "imgsearch_data", so no collection name can collide with ours.
CATALOG_SCHEMA = "imgsearch"
DATA_SCHEMA = "imgsearch_data"

# The cell (searcher.cells) of a row written without centroids for its segment: a search
# always scans it.
NO_CELL = -1

# Any constant works as long as every searcher uses the same one.
MIGRATION_LOCK_KEY = 0x1A65EA4C4

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "pgvector, catalogue of collections",
        [
            "CREATE EXTENSION IF NOT EXISTS vector",
            f"CREATE SCHEMA IF NOT EXISTS {CATALOG_SCHEMA}",
            f"CREATE SCHEMA IF NOT EXISTS {DATA_SCHEMA}",
            f"""
            CREATE TABLE {CATALOG_SCHEMA}.collections (
                name text PRIMARY KEY,
                dim integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
                metric text NOT NULL CHECK (metric IN ('l2', 'cosine', 'inner_product')),
                hnsw_m integer NOT NULL,
                hnsw_ef_construction integer NOT NULL,
                model_fingerprint text NOT NULL DEFAULT '',
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ],
    ),
    (
        2,
        "index kinds, build generations, measured recall",
        [
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.collections
                ADD COLUMN index_kind text NOT NULL DEFAULT 'vector'
                    CHECK (index_kind IN ('vector', 'halfvec', 'binary')),
                -- 0: the index name collections had before generations (hnsw_<hash>)
                ADD COLUMN index_generation integer NOT NULL DEFAULT 0,
                ADD COLUMN search_ef integer NOT NULL DEFAULT 0,
                ADD COLUMN search_candidates integer NOT NULL DEFAULT 0,
                ADD COLUMN quantizer_rows bigint NOT NULL DEFAULT 0,
                ADD COLUMN quantizer_centre vector,
                ADD COLUMN quantizer_spread vector,
                ADD COLUMN built_rows bigint,
                ADD COLUMN built_at timestamptz,
                ADD COLUMN build_seconds real,
                ADD COLUMN recall real,
                ADD COLUMN recall_sample integer NOT NULL DEFAULT 0,
                ADD COLUMN recall_measured_at timestamptz,
                ADD COLUMN index_note text NOT NULL DEFAULT ''
            """,
        ],
    ),
    (
        3,
        "segments: rows added to an indexed collection stay off its graph until folded in",
        [
            # Rows whose segment is at most index_segment are in the collection's index (a
            # partial index, WHERE segment <= index_segment); the others are fresh, searched
            # exactly, and written with growing_segment. Existing rows: segment 0, indexed.
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.collections
                ADD COLUMN index_segment integer NOT NULL DEFAULT 0,
                ADD COLUMN growing_segment integer NOT NULL DEFAULT 1
            """,
            f"""
            DO $$
            DECLARE collection record;
            BEGIN
                FOR collection IN SELECT name FROM {CATALOG_SCHEMA}.collections LOOP
                    EXECUTE format(
                        'ALTER TABLE {DATA_SCHEMA}.%I ADD COLUMN segment integer NOT NULL '
                        'DEFAULT 0', collection.name);
                    EXECUTE format('CREATE INDEX %I ON {DATA_SCHEMA}.%I (segment)',
                        'segment_' || md5(collection.name), collection.name);
                END LOOP;
            END $$
            """,
        ],
    ),
    (
        4,
        "coarse cells for fresh rows: a search scans the fresh rows near its query, not all",
        [
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.collections
                ADD COLUMN cells_segment integer NOT NULL DEFAULT 0
            """,
            f"""
            CREATE TABLE {CATALOG_SCHEMA}.fresh_cells (
                collection text NOT NULL REFERENCES {CATALOG_SCHEMA}.collections (name)
                    ON DELETE CASCADE,
                segment integer NOT NULL,
                centre bytea NOT NULL,  -- float32 (dim), little-endian
                centroids bytea NOT NULL,  -- float32 (cells, dim), little-endian
                probes integer NOT NULL,  -- how many of its nearest cells a search scans
                PRIMARY KEY (collection, segment)
            )
            """,
            # The (segment) index of migration 3 becomes (segment, cell): it serves both.
            f"""
            DO $$
            DECLARE collection record;
            BEGIN
                FOR collection IN SELECT name FROM {CATALOG_SCHEMA}.collections LOOP
                    EXECUTE format(
                        'ALTER TABLE {DATA_SCHEMA}.%I ADD COLUMN cell integer NOT NULL '
                        'DEFAULT {NO_CELL}', collection.name);
                    EXECUTE format('CREATE INDEX %I ON {DATA_SCHEMA}.%I (segment, cell)',
                        'fresh_' || md5(collection.name), collection.name);
                    EXECUTE format('DROP INDEX IF EXISTS {DATA_SCHEMA}.%I',
                        'segment_' || md5(collection.name));
                END LOOP;
            END $$
            """,
        ],
    ),
    (
        5,
        "named vectors: a collection's further vectors, each in a table of its own",
        [
            # A named vector's table is a collection of its own in the catalogue (index,
            # upkeep, effort), tied to the collection whose items it belongs to.
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.collections
                ADD COLUMN parent text REFERENCES {CATALOG_SCHEMA}.collections (name)
                    ON DELETE CASCADE,
                ADD COLUMN vector_name text NOT NULL DEFAULT ''
            """,
        ],
    ),
    (
        6,
        "graphs by coarse cell: a large collection's index as one graph per cell",
        [
            # graph_cells 0: one graph (as before). Rows of a collection with graphs by cell
            # carry their cell; those written without one are found by a partial index
            # (searcher.cell_graphs) until a fold gives them theirs.
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.collections
                ADD COLUMN graph_cells integer NOT NULL DEFAULT 0,
                ADD COLUMN graph_probes integer NOT NULL DEFAULT 0
            """,
        ],
    ),
    (
        7,
        "finer cells for the fresh rows of graphs by cell",
        [
            # graph_fine_cells 0: a row's cell is its graph (as before); else graph ×
            # graph_fine_cells + its fine cell, and each graph's predicate is a range of cells.
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.collections
                ADD COLUMN graph_fine_cells integer NOT NULL DEFAULT 0
            """,
            f"""
            ALTER TABLE {CATALOG_SCHEMA}.fresh_cells
                ADD COLUMN fine_centroids bytea,  -- float32 (fine cells, dim), little-endian
                ADD COLUMN fine_probes integer NOT NULL DEFAULT 0
            """,
        ],
    ),
]


def apply_migrations(conn: Any) -> int:
    """Bring the schema up to date; return the schema version. Safe to run from many processes
    at once: the first takes the lock and migrates, the others wait and find nothing to do."""
    latest = MIGRATIONS[-1][0]
    with conn, conn.cursor() as cur:
        # Up to date: nothing to create, so a run-time role without DDL rights starts too.
        cur.execute("SELECT to_regclass('public.imgsearch_schema_migrations') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("SELECT coalesce(max(version), 0) FROM public.imgsearch_schema_migrations")
            current: int = cur.fetchone()[0]
            if current >= latest:
                return current
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        cur.execute(
            """CREATE TABLE IF NOT EXISTS public.imgsearch_schema_migrations (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        cur.execute("SELECT coalesce(max(version), 0) FROM public.imgsearch_schema_migrations")
        current = cur.fetchone()[0]
        for version, description, statements in MIGRATIONS:
            if version <= current:
                continue
            logger.info("applying schema migration %d: %s", version, description)
            for statement in statements:
                cur.execute(statement)
            cur.execute(
                "INSERT INTO public.imgsearch_schema_migrations (version, description) "
                "VALUES (%s, %s)",
                (version, description),
            )
            current = version
    return current
