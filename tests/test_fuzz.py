"""Hostile input, generated: whatever the bytes, dimensions, numbers or strings, the answer is a
clear refusal or a correct result — never a crash, a hang, or INTERNAL."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedder.decode import DecodeLimits, decode_image
from imgsearch import vectors
from imgsearch.errors import InvalidArgument, ResourceExhausted
from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images
from tests.searcher_helpers import searcher_stub

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SEEDS = [images.jpeg(1, (64, 48))] + [
    images.encode(images.photo(seed, (40, 30)), fmt)
    for seed, fmt in enumerate(["PNG", "GIF", "BMP", "WEBP"], start=2)
]
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
}


def _check_decoded(data: bytes) -> None:
    try:
        image = decode_image(data, DecodeLimits(max_image_pixels=4_000_000))
    except (InvalidArgument, ResourceExhausted) as exc:
        assert str(exc)  # a reason, never an empty message
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_are_refused(data: bytes) -> None:
    _check_decoded(data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    st.integers(0, 10**6),
)
def test_corrupted_real_images_decode_or_are_refused(seed: bytes, flips, cut: int) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _check_decoded(bytes(data[: max(1, cut % (len(data) + 1))]))


@pytest.fixture(scope="module")
def stub(postgres_dsn: str) -> Iterator[object]:
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            stub.CreateCollection(pb.CreateCollectionRequest(name="fuzz", dim=4))
            yield stub


def _outcome(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(request, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        assert exc.details(), exc
        return exc.code()


@FUZZ
@given(st.text(max_size=80))
def test_any_collection_name_is_refused_or_found_never_internal(stub, name: str) -> None:
    code = _outcome(stub.GetStats, pb.GetStatsRequest(collection=name))
    assert code in REFUSALS | {grpc.StatusCode.OK}, (name, code)


@FUZZ
@given(
    st.lists(st.floats(width=32), max_size=8),
    st.integers(-5, 2000),
    st.lists(st.text(max_size=40), max_size=4),
)
def test_any_search_request_is_answered_or_refused(stub, values, top_k: int, labels) -> None:  # type: ignore[no-untyped-def]
    request = pb.SearchRequest(
        collection="fuzz",
        vector=vectors.to_proto(np.asarray(values, dtype=np.float32)),
        top_k=max(top_k, 0),
        filter=pb.Filter(labels=labels),
    )
    code = _outcome(stub.Search, request)
    assert code in REFUSALS | {grpc.StatusCode.OK}, (values, top_k, labels, code)


@FUZZ
@given(
    st.integers(-(2**63), 2**63 - 1),
    st.lists(st.floats(width=32), min_size=0, max_size=6),
    st.text(max_size=300),
    st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5),
)
def test_any_upserted_item_is_stored_as_given_or_refused(
    stub, item_id, values, label, attributes
) -> None:  # type: ignore[no-untyped-def]
    item = pb.Item(id=item_id, label=label, attributes=attributes,
                   vector=vectors.to_proto(np.asarray(values, dtype=np.float32)))  # fmt: skip
    code = _outcome(stub.Upsert, iter([pb.UpsertRequest(collection="fuzz", items=[item])]))
    assert code in REFUSALS | {grpc.StatusCode.OK}, code
    if code == grpc.StatusCode.OK:
        (stored,) = stub.Get(
            pb.GetRequest(collection="fuzz", ids=[item_id], include_vectors=True)
        ).items
        assert (stored.label, dict(stored.attributes)) == (label, attributes)
        assert list(stored.vector.values) == list(np.asarray(values, dtype=np.float32))
