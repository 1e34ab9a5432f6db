"""The searcher's query written out by hand on a raw psycopg2 connection: the baseline the
Search RPC is measured against in bench/searcher.py (what the service adds to its SQL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg2
from pgvector.psycopg2 import register_vector

from imgsearch.v1 import searcher_pb2 as pb
from searcher.catalogue import Metric, quantizer_prefix
from searcher.cells import Cells
from searcher.kinds import BINARY_THRESHOLDS

TOP_K = 10


def sql_searcher(
    dsn: str, collection: pb.Collection, ef_search: int = 0
) -> tuple[Callable[[np.ndarray], list[int]], Any]:
    """The searcher's query for this kind and effort (the collection's, or `ef_search`),
    written out by hand, on a raw psycopg2 connection with pgvector-python's adapter: one
    round trip, as the searcher does it (the index's rows merged with an exact scan of the
    fresh rows, none here)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    register_vector(conn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT index_segment, graph_cells, graph_probes, cells_segment, graph_fine_cells "
            "FROM imgsearch.collections WHERE name = %s",
            (collection.name,),
        )
        indexed, graphs, walked, cells_segment, fine = cur.fetchone()
    cells = graph_cells(conn, collection, cells_segment) if graphs else None
    table = f'imgsearch_data."{collection.name}"'
    dim, index = collection.dim, collection.index
    settings = f"SET LOCAL hnsw.ef_search = {ef_search or index.ef_search}; "
    select = "SELECT id, label, uri, attributes, embedding <-> %(q)s AS distance"
    kind = collection.index_params.kind
    fresh = f"SELECT * FROM {table} WHERE segment > {indexed} OFFSET 0"
    if graphs:  # and the rows written without a cell, which no graph takes
        fresh += f") UNION ALL (SELECT * FROM {table} WHERE cell = -1 AND segment <= {indexed}"
    fresh = f"{select} FROM (({fresh})) AS fresh ORDER BY distance LIMIT {TOP_K}"
    if kind == pb.INDEX_KIND_HALFVEC:
        order = f"embedding::halfvec({dim}) <-> %(q)s::halfvec({dim})"
    elif kind == pb.INDEX_KIND_BINARY:
        quantize = f"imgsearch_data.{quantizer_prefix(collection.name)}{index.generation}"
        bits = dim * len(BINARY_THRESHOLDS)
        order = f"{quantize}(embedding)::bit({bits}) <~> {quantize}(%(q)s)"
    else:
        order = "embedding <-> %(q)s"
    limit = index.candidates if kind != pb.INDEX_KIND_VECTOR else TOP_K

    def walk(cell: int | None) -> str:
        where = f"segment <= {indexed}"
        if cell is not None and fine:  # a graph by cell holding a range of finer cells
            where += f" AND cell >= {cell * fine} AND cell < {(cell + 1) * fine}"
        elif cell is not None:
            where += f" AND cell = {cell}"
        return (
            f"(SELECT id, label, uri, attributes, embedding FROM {table} WHERE {where} "
            f"ORDER BY {order} LIMIT {limit})"
        )

    def query(q: np.ndarray) -> str:
        walks = [None] if cells is None else cells.nearest(q, walked)
        from_index = " UNION ALL ".join(walk(cell) for cell in walks)
        from_index = f"{select} FROM ({from_index}) AS c ORDER BY distance LIMIT {TOP_K}"
        return (
            f"SELECT * FROM (({from_index}) UNION ALL ({fresh})) AS hits "
            f"ORDER BY distance LIMIT {TOP_K}"
        )

    def search(q: np.ndarray) -> list[int]:
        with conn.cursor() as cur:
            cur.execute(settings + query(q), {"q": q})
            return [row[0] for row in cur.fetchall()]

    return search, conn


def graph_cells(conn: Any, collection: pb.Collection, segment: int) -> Cells:
    """The centroids of a collection's graphs by cell, as the searcher stored them."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT centre, centroids FROM imgsearch.fresh_cells WHERE collection = %s "
            "AND segment = %s",
            (collection.name, segment),
        )
        centre, centroids = cur.fetchone()
    metric = Metric(pb.Metric.Name(collection.metric).removeprefix("METRIC_").lower())
    return Cells.stored(bytes(centre), bytes(centroids), collection.dim, metric)
