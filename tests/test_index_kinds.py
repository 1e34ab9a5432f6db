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
from searcher.exact_neighbours import ExactNeighbours
from searcher.kinds import spec
from searcher.pgvector_io import Item, decode_binary_copy_ids_vectors, encode_binary_copy
from searcher.pool import ConnectionPool
from searcher.recall import recall_by_distance
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


def _numpy_nearest(data, ids, queries, query_ids, metric: Metric, k: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Each query's k smallest float64 distances over `data`, leaving out its own row."""
    rows = []
    for q, own in zip(queries.astype(np.float64), query_ids, strict=True):
        distances = _numpy_distances(data, q, metric)
        distances[ids == own] = np.inf
        rows.append(np.sort(distances)[:k])
    return np.asarray(rows)


def _numpy_distances(data, query, metric: Metric) -> np.ndarray:  # type: ignore[no-untyped-def]
    x, q = data.astype(np.float64), np.asarray(query, dtype=np.float64)
    if metric is Metric.L2:
        return np.linalg.norm(x - q, axis=1)
    if metric is Metric.COSINE:
        return 1 - x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    return -(x @ q)


def _assert_ids_at_their_distances(exact, data, ids, queries, distances, metric) -> None:  # type: ignore[no-untyped-def]
    """Each neighbour id ExactNeighbours gives is a row at the distance it gives (ties: any of
    the rows at that distance), none of them twice for one query."""
    position = {int(i): p for p, i in enumerate(ids)}
    found = exact.neighbour_ids
    assert found.shape == distances.shape
    for query, row_ids, row_distances in zip(queries, found, distances, strict=True):
        assert len(set(row_ids.tolist())) == len(row_ids)
        rows = data[[position[int(i)] for i in row_ids]]
        np.testing.assert_allclose(
            _numpy_distances(rows, query, metric), row_distances, rtol=1e-9, atol=1e-9
        )


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
    truth = _numpy_nearest(data, ids, queries, query_ids, metric, 10)
    distances = exact.finish()
    np.testing.assert_allclose(distances, truth, rtol=1e-9, atol=1e-9)
    _assert_ids_at_their_distances(exact, data, ids, queries, distances, metric)


def test_streamed_exact_neighbours_stay_exact_far_from_the_origin() -> None:
    # Rows 1e-3 apart at 100 from the origin: in float32 their squared distances by the
    # expansion |v|^2 - 2 v.q + |q|^2 would all round to the same few values.
    rng = np.random.default_rng(5)
    data = (100 + 1e-3 * rng.normal(size=(20_000, 16))).astype(np.float32)
    queries = (data[:4] + 1e-4 * rng.normal(size=(4, 16))).astype(np.float32)
    exact = ExactNeighbours(queries, np.full(4, -1), Metric.L2, k=10, dim=16)
    payload = encode_binary_copy([Item(i, v) for i, v in enumerate(data)], 16, segment=1)
    exact.write(_as_id_vector_copy(payload.getvalue(), 16))
    truth = _numpy_nearest(data, np.arange(len(data)), queries, np.full(4, -1), Metric.L2, 10)
    np.testing.assert_allclose(exact.finish(), truth, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric", list(Metric))
def test_streamed_exact_neighbours_are_exact_across_chunks_and_duplicate_rows(
    metric: Metric, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(6)
    data = rng.normal(size=(6_000, 16)).astype(np.float32)
    data[4_000:] = data[rng.integers(0, 100, size=2_000)]  # 100 rows stored ~20 times each
    ids = np.arange(len(data))
    stored = rng.choice(len(data), 60, replace=False)
    queries = np.concatenate([data[stored], data[:60] + 0.01 * rng.normal(size=(60, 16))])
    query_ids = np.concatenate([ids[stored], np.full(60, -1)])
    monkeypatch.setattr(ExactNeighbours, "CHUNK_DISTANCES", len(queries) * 700)  # 9 chunks
    exact = ExactNeighbours(queries.astype(np.float32), query_ids, metric, k=10, dim=16)
    payload = encode_binary_copy([Item(int(i), v) for i, v in zip(ids, data, strict=True)], 16, 1)
    rows = _as_id_vector_copy(payload.getvalue(), 16)
    for start in range(0, len(rows), 8_192):
        exact.write(rows[start : start + 8_192])
    queries = queries.astype(np.float32)
    truth = _numpy_nearest(data, ids, queries, query_ids, metric, 10)
    distances = exact.finish()
    np.testing.assert_allclose(distances, truth, rtol=1e-9, atol=1e-9)
    _assert_ids_at_their_distances(exact, data, ids, queries, distances, metric)


def test_streamed_exact_neighbours_of_fewer_rows_than_asked_are_all_of_them() -> None:
    data = np.random.default_rng(7).normal(size=(5, 16)).astype(np.float32)
    exact = ExactNeighbours(data[:2], np.array([0, 1]), Metric.L2, k=10, dim=16)
    payload = encode_binary_copy([Item(i, v) for i, v in enumerate(data)], 16, segment=1)
    exact.write(_as_id_vector_copy(payload.getvalue(), 16))
    truth = _numpy_nearest(data, np.arange(5), data[:2], np.array([0, 1]), Metric.L2, 4)
    np.testing.assert_allclose(exact.finish(), truth, rtol=1e-9)
    assert [sorted(row) for row in exact.neighbour_ids.tolist()] == [[1, 2, 3, 4], [0, 2, 3, 4]]


def test_streamed_exact_neighbours_of_rows_not_as_declared_fail_the_copy() -> None:
    data = np.random.default_rng(8).normal(size=(50, 8)).astype(np.float32)
    exact = ExactNeighbours(np.zeros((2, 16), np.float32), np.full(2, -1), Metric.L2, 10, 16)
    payload = encode_binary_copy([Item(i, v) for i, v in enumerate(data)], 8, segment=1)
    exact.write(_as_id_vector_copy(payload.getvalue(), 8))
    with pytest.raises(ValueError, match="not 16-d"):
        exact.finish()
    exact.close()  # and its thread is gone


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
