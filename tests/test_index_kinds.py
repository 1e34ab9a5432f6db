"""The index kinds in the searcher's core (no gRPC): each query walks its index, quantized
kinds re-rank to exact distances, what a kind cannot hold is refused, and the exact neighbours
that recall is measured against are right."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from imgsearch.errors import InvalidArgument
from searcher.catalogue import IndexKind, Metric
from searcher.kinds import spec
from searcher.pgvector_io import Item, decode_binary_copy_ids_vectors, encode_binary_copy
from searcher.pool import ConnectionPool
from searcher.recall import ExactNeighbours, recall_by_distance
from searcher.settings import StoreSettings
from searcher.store import VectorStore
from tests.searcher_helpers import clustered_vectors

_names = itertools.count()


@pytest.fixture(scope="module")
def store(postgres_dsn: str) -> Iterator[VectorStore]:
    pool = ConnectionPool(postgres_dsn, max_size=4)
    store = VectorStore(pool, StoreSettings(shadow_share=0))
    store.open()
    try:
        yield store
    finally:
        store.close()
        pool.close()


def load(store: VectorStore, data: np.ndarray, kind: IndexKind, metric: Metric = Metric.L2) -> str:
    name = f"k{next(_names)}"
    store.create_collection(name, data.shape[1], metric, kind=kind)
    session = store.begin_upsert(name)
    for start in range(0, len(data), 1000):
        session.write([Item(i, data[i]) for i in range(start, min(start + 1000, len(data)))])
    session.close()
    return name


@pytest.mark.parametrize("kind", list(IndexKind))
def test_each_kinds_query_walks_its_index(store: VectorStore, postgres_dsn: str, kind) -> None:
    data = clustered_vectors(3000, dim=128, seed=1)
    name = load(store, data, kind)
    collection = store.get_collection(name)
    order_by = spec(kind).candidate_order(collection)
    with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("EXPLAIN SELECT id FROM {} WHERE {} ORDER BY {} LIMIT 10").format(
                collection.table, collection.indexed, order_by
            ),
            {"query": "[" + ",".join(["0.5"] * 128) + "]"},
        )
        plan = "\n".join(row[0] for row in cur.fetchall())
    conn.close()
    assert f"Index Scan using {collection.index_name()}" in plan, plan


def test_quantized_kinds_return_exact_distances_and_the_index_path(store: VectorStore) -> None:
    data = clustered_vectors(3000, dim=128, seed=2)
    queries = clustered_vectors(5, dim=128, seed=3)
    for kind in (IndexKind.HALFVEC, IndexKind.BINARY):
        name = load(store, data, kind)
        found = 0
        for query in queries:
            result = store.search(name, query, 10)
            assert not result.exact
            expected = np.linalg.norm(data.astype(np.float64) - query, axis=1)
            for hit in result.hits:
                assert abs(hit.distance - expected[hit.id]) <= 1e-4 * max(1, expected[hit.id])
            distances = [hit.distance for hit in result.hits]
            assert distances == sorted(distances)
            found += len({h.id for h in result.hits} & set(np.argsort(expected)[:10].tolist()))
        assert found / (10 * len(queries)) >= 0.9, kind


def test_a_search_on_a_connection_the_pool_just_opened_works(store: VectorStore) -> None:
    # A new connection must be lent out idle: a search switches it to autocommit.
    name = load(store, clustered_vectors(50, dim=8, seed=5), IndexKind.VECTOR)
    with store.pool.connection(), store.pool.connection():  # the idle ones are taken
        assert store.search(name, np.ones(8, np.float32), 3).hits


def test_halfvec_refuses_values_half_precision_cannot_hold(store: VectorStore) -> None:
    name = load(store, np.ones((5, 4), np.float32), IndexKind.HALFVEC)
    huge = np.array([1, 2, 70_000, 3], np.float32)
    with pytest.raises(InvalidArgument, match="beyond ±65504, which half precision cannot hold"):
        store.upsert(name, [Item(9, huge)])
    with pytest.raises(InvalidArgument, match="query: vector has a value beyond"):
        store.search(name, huge, 3)
    assert store.stats(name).row_count == 5


def test_the_default_kind_gives_way_to_one_that_serves_the_metric(postgres_dsn: str) -> None:
    pool = ConnectionPool(postgres_dsn, max_size=2)
    store = VectorStore(pool, StoreSettings(default_kind=IndexKind.BINARY, shadow_share=0))
    store.open()
    try:
        inner = store.create_collection(f"k{next(_names)}", 8, Metric.INNER_PRODUCT)
        cosine = store.create_collection(f"k{next(_names)}", 8, Metric.COSINE)
        with pytest.raises(InvalidArgument, match="BINARY cannot serve metric INNER_PRODUCT"):
            store.create_collection("never", 8, Metric.INNER_PRODUCT, kind=IndexKind.BINARY)
    finally:
        store.close()
        pool.close()
    assert (inner.kind, cosine.kind) == (IndexKind.HALFVEC, IndexKind.BINARY)


@pytest.mark.parametrize("metric", list(Metric))
def test_streamed_exact_neighbours_equal_numpys(metric: Metric) -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(size=(50_123, 16)).astype(np.float32)
    ids = np.arange(50_123) * 3
    queries, query_ids = data[[5, 777, 40_000]], ids[[5, 777, 40_000]]
    exact = ExactNeighbours(queries, query_ids, metric, k=10, dim=16)
    payload = encode_binary_copy(
        [Item(int(i), v) for i, v in zip(ids, data, strict=True)], 16, segment=1
    )
    rows = _as_id_vector_copy(payload.getvalue(), 16)
    for start in range(0, len(rows), 65_536):  # as psycopg2 hands COPY data over: in pieces
        exact.write(rows[start : start + 65_536])
    got = exact.finish()
    x = data.astype(np.float64)
    for row, q in enumerate(queries.astype(np.float64)):
        if metric is Metric.L2:
            distances = np.linalg.norm(x - q, axis=1)
        elif metric is Metric.COSINE:
            distances = 1 - x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
        else:
            distances = -(x @ q)
        distances[ids == query_ids[row]] = np.inf  # each query leaves itself out
        np.testing.assert_allclose(got[row], np.sort(distances)[:10], rtol=1e-9, atol=1e-9)


def test_recall_counts_ties_as_found() -> None:
    truth = [0.0, 1.0, 2.0, 2.0]
    assert recall_by_distance([0.0, 1.0, 2.0, 2.0], truth) == 1.0
    assert recall_by_distance([0.0, 1.0, 2.0, 2.00001], truth) == 1.0  # the other tie
    assert recall_by_distance([0.0, 1.0, 2.0, 2.5], truth) == 0.75
    assert recall_by_distance([0.0, 1.0], truth) == 0.5  # fewer hits than asked


def _as_id_vector_copy(full_rows: bytes, dim: int) -> bytes:
    """Re-encode (id, label, uri, attributes, embedding, segment, cell) COPY rows as (id,
    embedding) rows, the shape of the COPY that ExactNeighbours reads."""
    import struct

    out = io.BytesIO()
    out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    stream = io.BytesIO(full_rows[19:])
    while True:
        (fields,) = struct.unpack("!h", stream.read(2))
        if fields == -1:
            break
        values = []
        for _ in range(fields):
            (length,) = struct.unpack("!i", stream.read(4))
            values.append(stream.read(length))
        out.write(struct.pack("!hi", 2, 8) + values[0])
        out.write(struct.pack("!i", len(values[4])) + values[4])
    out.write(struct.pack("!h", -1))
    ids, vectors = decode_binary_copy_ids_vectors(out.getvalue(), dim)
    assert len(ids) == len(vectors)
    return out.getvalue()
