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


def test_the_searchers_sql_literal_round_trips_every_float32() -> None:
    from searcher.pgvector_io import vector_literal

    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.normal(size=500).astype(np.float32),
            np.array([0.0, -0.0, 1e-45, 3.4028235e38, -1.1754944e-38], dtype=np.float32),
            rng.normal(scale=1e-30, size=100).astype(np.float32),
        ]
    )
    text = vector_literal(values)
    assert text.startswith("[") and text.endswith("]")
    parsed = np.array([np.float32(v) for v in text[1:-1].split(",")], dtype=np.float32)
    assert np.array_equal(parsed, values)
