"""What GetStats reports of a collection: its rows, index and sizes on disk, and the database's
versions and the settings a user tuning the searcher needs to see."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from searcher.catalogue import INDEX_IS_VALID, Collection
from searcher.cell_graphs import rebuilt_graphs
from searcher.cells import Cells, cell_total, fresh_probes
from searcher.pool import ConnectionPool

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
    fresh_rows: int  # not in the index yet: searched exactly until folded in
    fresh_cells: int  # the cells they are sorted into (searcher.cells); 0: none
    fresh_cells_searched: int  # how many of its query's nearest cells a search scans
    # (graphs, m, ef_construction) of graphs by cell a repair rebuilt with other parameters
    rebuilt_graphs: list[tuple[int, int, int]]


def collection_stats(
    pool: ConnectionPool,
    collection: Collection,
    *,
    versions: tuple[str, str],
    live_recall: float | None,
    cells: Cells | None,
) -> Stats:
    """The collection's stats; `versions`: (PostgreSQL, pgvector) as the store detected them."""
    with pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {table}), ({valid}), pg_table_size(%s::regclass), "
                "pg_indexes_size(%s::regclass), (SELECT count(*) FROM {table} WHERE {fresh})"
            ).format(table=collection.table, valid=sql.SQL(INDEX_IS_VALID), fresh=collection.fresh),
            (collection.qualified_index, collection.qualified_table, collection.qualified_table),
        )
        rows, has_index, table_bytes, index_bytes, fresh_rows = cur.fetchone()
        cur.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            (list(REPORTED_SETTINGS),),
        )
        settings = dict(cur.fetchall())
        rebuilt = rebuilt_graphs(cur, collection)
    return Stats(
        collection=collection,
        row_count=rows,
        index_present=has_index,
        table_bytes=table_bytes,
        index_bytes=index_bytes,
        postgres_version=versions[0],
        pgvector_version=versions[1],
        settings=settings,
        live_recall=live_recall,
        fresh_rows=fresh_rows if has_index else rows,
        fresh_cells=cell_total(cells) if cells is not None else 0,
        fresh_cells_searched=fresh_probes(collection, cells) if cells is not None else 0,
        rebuilt_graphs=rebuilt,
    )
