"""The fast numpy ⇄ Vector conversion is byte-for-byte the message protobuf itself builds."""

from __future__ import annotations

import numpy as np
import pytest

from imgsearch import vectors
from imgsearch.v1 import vector_pb2


@pytest.mark.parametrize("dim", [0, 1, 31, 32, 33, 1000, 2048, 40_000])
def test_to_proto_matches_protobufs_own_encoding(dim: int) -> None:
    values = np.random.default_rng(dim).normal(size=dim).astype(np.float32)
    fast = vectors.to_proto(values)
    reference = vector_pb2.Vector(values=values.tolist())
    assert fast.SerializeToString() == reference.SerializeToString()
    assert np.array_equal(vectors.from_proto(fast), values)


def test_non_finite_values_and_float64_input_survive_as_float32() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1e-45, 0.1], dtype=np.float64)
    back = vectors.from_proto(vectors.to_proto(values))
    assert back.dtype == np.float32
    assert np.array_equal(back, values.astype(np.float32), equal_nan=True)


def test_a_matrix_is_refused_rather_than_flattened() -> None:
    with pytest.raises(ValueError, match="1-d"):
        vectors.to_proto(np.zeros((2, 3), dtype=np.float32))


def float32_edge_cases() -> np.ndarray:
    """Random bit patterns (every exponent), the extremes, and the floats at and beside each
    power of ten, where a literal's exponent is easiest to get wrong; both signs."""
    rng = np.random.default_rng(3)
    patterns = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    powers = (10.0 ** np.arange(-45, 39)).astype(np.float32)
    values = np.concatenate(
        [
            patterns.view(np.float32),
            np.array([0.0, 1e-45, 1.1754944e-38, 3.4028235e38, 0.1, 1.0], dtype=np.float32),
            powers,
            np.nextafter(powers, np.float32(0)),
            np.nextafter(powers, np.float32(np.inf)),
            rng.normal(scale=1e-30, size=100).astype(np.float32),
        ]
    )
    values = values[np.isfinite(values)]
    return np.concatenate([values, -values])


def test_the_searchers_sql_literal_round_trips_every_float32() -> None:
    from searcher.pgvector_io import vector_literal

    values = float32_edge_cases()
    text = vector_literal(values)
    assert text.startswith("[") and text.endswith("]")
    parsed = np.array([np.float32(v) for v in text[1:-1].split(",")], dtype=np.float32)
    assert np.array_equal(parsed.view(np.uint32), values.view(np.uint32))  # -0.0 stays -0.0


def test_pgvector_reads_the_searchers_literal_as_the_same_float32s(postgres_dsn: str) -> None:
    import psycopg2
    from pgvector.psycopg2 import register_vector

    from searcher.pgvector_io import as_array, vector_literal

    values = float32_edge_cases()
    conn = psycopg2.connect(postgres_dsn)
    try:
        register_vector(conn)
        with conn.cursor() as cur:
            for part in np.array_split(values, 20):  # pgvector's most dimensions: 16,000
                cur.execute("SELECT %s::vector", (vector_literal(part),))
                back = as_array(cur.fetchone()[0])
                assert np.array_equal(back.view(np.uint32), part.view(np.uint32))
    finally:
        conn.close()


def test_the_searchers_sql_literal_refuses_values_pgvector_cannot_hold() -> None:
    from searcher.pgvector_io import vector_literal

    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="finite"):
            vector_literal(np.array([0.5, bad], dtype=np.float32))
