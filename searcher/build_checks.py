"""What a finished index build must show before it replaces the last generation: every graph
valid and walked by the planner for a nearest-neighbour query; and whether it spilled to disk."""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from imgsearch.errors import Unavailable
from searcher.catalogue import INDEX_IS_VALID, Collection
from searcher.kinds import spec
from searcher.pgvector_io import as_array, vector_literal
from searcher.schema import DATA_SCHEMA


def spill_notice(notices: list[str]) -> str:
    """PostgreSQL's notice that the HNSW graph outgrew maintenance_work_mem (from then on the
    build inserts row by row through the on-disk path, far slower), or ""."""
    for notice in notices:
        if "no longer fits into maintenance_work_mem" in notice:
            return " ".join(notice.split()).removeprefix("NOTICE: ")
    return ""


def check_usable(cur: Any, collection: Collection) -> None:
    """Raise unless the collection's current index (each of its graphs) is valid and the
    planner walks it for a nearest-neighbour query (with sequential scans and sorts ruled out,
    so that a small table's cheaper plan does not hide an index that can never be used)."""
    for name in collection.index_names():
        cur.execute(INDEX_IS_VALID, (f"{DATA_SCHEMA}.{name}",))
        if not cur.fetchone()[0]:
            raise Unavailable(f"the new index {name} of {collection.name!r} is not valid")
    cur.execute(
        sql.SQL("SELECT embedding, cell FROM {} WHERE {} LIMIT 1").format(
            collection.table, collection.indexed
        )
    )
    row = cur.fetchone()
    if row is None:
        return  # nothing to search with: valid is all there is to check
    cell = collection.graph_of(row[1]) if collection.graph_cells else None
    cur.execute("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
    try:
        cur.execute(
            sql.SQL("EXPLAIN SELECT id FROM {} WHERE {} ORDER BY {} LIMIT 10").format(
                collection.table,
                collection.in_graph(cell),
                spec(collection.kind).candidate_order(collection),
            ),
            {"query": vector_literal(as_array(row[0]))},
        )
        plan = "\n".join(line for (line,) in cur.fetchall())
    finally:
        cur.execute("ROLLBACK")
    new = collection.index_name(cell=cell)
    previous = {collection.index_name(collection.generation - 1, c) for c in (None, cell)}
    # While the previous generation exists the planner picks either when their expressions
    # are the same once inlined (a BINARY quantizer refitted on the same rows): then the new
    # one serves the same searches.
    if not any(f" using {name} " in plan for name in {new, *previous}):
        raise Unavailable(f"searches of {collection.name!r} would not use its new index {new}")
