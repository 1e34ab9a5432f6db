"""Writing to the searcher over a real gRPC server and a real PostgreSQL + pgvector: upserts
that update in place, bulk loads, messages refused whole with what was kept said, deletes.

Every test runs on both engines, as tests/test_searcher_service.py's do.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2

from imgsearch.v1 import searcher_pb2 as pb
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    new_collection,
    rpc_error,
    searcher_on,
    searcher_stub,
    upsert_messages,
    vector,
)


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    with searcher_on(request.param, request, tmp_path_factory) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


def test_upserting_the_same_ids_again_updates_them_in_place(stub) -> None:
    name = new_collection(stub, dim=8)
    first = np.ones((10, 8), np.float32)
    second = np.full((10, 8), 2.0, np.float32)
    stub.Upsert(upsert_messages(name, first, labels=["old"] * 10))
    summary = stub.Upsert(upsert_messages(name, second, labels=["new"] * 10))
    assert (summary.inserted_count, summary.updated_count) == (0, 10)
    stats = stub.GetStats(pb.GetStatsRequest(collection=name))
    assert stats.row_count == 10
    got = stub.Get(pb.GetRequest(collection=name, ids=[3, 999], include_vectors=True))
    assert [(i.id, i.label, list(i.vector.values)) for i in got.items] == [(3, "new", [2.0] * 8)]
    assert list(got.missing_ids) == [999]


def test_a_bulk_load_that_repeats_ids_across_messages_updates_them(stub) -> None:
    # Into an empty collection new ids are COPYed straight in; a repeated id must fall back
    # to the merge and update, not fail or duplicate.
    name = new_collection(stub, dim=8)
    data = np.arange(30 * 8, dtype=np.float32).reshape(30, 8)
    messages = [
        *upsert_messages(name, data[:20], labels=["first"] * 20, per_message=10),
        *upsert_messages(name, data[10:30], labels=["second"] * 20, first_id=10, per_message=10),
    ]
    summary = stub.Upsert(iter(messages))
    assert (summary.inserted_count, summary.updated_count, summary.message_count) == (30, 10, 4)
    got = stub.Get(pb.GetRequest(collection=name, ids=list(range(30)), include_vectors=True))
    assert [i.label for i in got.items] == ["first"] * 10 + ["second"] * 20
    assert np.array_equal([list(i.vector.values) for i in got.items], data)
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).row_count == 30


def test_a_bad_item_in_message_3_rejects_it_whole_and_keeps_messages_1_and_2(stub) -> None:
    name = new_collection(stub, dim=8)
    data = np.random.default_rng(8).normal(size=(40, 8)).astype(np.float32)
    messages = list(upsert_messages(name, data, per_message=10))
    messages[2].items[4].vector.values[3] = float("nan")
    error = rpc_error(stub.Upsert, iter(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 3" in error.details() and "item 4 (id 24)" in error.details()
    assert "NaN" in error.details() and "2 messages, 20 items inserted" in error.details()
    detail = _status_detail(error)
    summary = pb.UpsertResponse()
    assert detail.Unpack(summary)
    assert (summary.inserted_count, summary.message_count) == (20, 2)
    stats = stub.GetStats(pb.GetStatsRequest(collection=name))
    assert stats.row_count == 20
    got = stub.Get(pb.GetRequest(collection=name, ids=list(range(40))))
    assert [i.id for i in got.items] == list(range(20))


def _status_detail(error: grpc.RpcError) -> any_pb2.Any:
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and len(status.details) == 1
    return status.details[0]


@pytest.mark.parametrize(
    ("bad", "code", "words"),
    [
        ({"vector": np.ones(999)}, grpc.StatusCode.INVALID_ARGUMENT, "999 values"),
        ({"vector": np.full(1000, np.inf)}, grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinity"),
        ({"id": -5}, grpc.StatusCode.INVALID_ARGUMENT, "id must be"),
        ({"label": "x" * 5000}, grpc.StatusCode.INVALID_ARGUMENT, "label is 5000 bytes"),
        ({"label": "a\x00b"}, grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
    ],
)
def test_bad_items_are_refused_and_nothing_is_written(stub, bad, code, words) -> None:
    name = new_collection(stub)
    item = {"id": 1, "vector": np.ones(1000), **bad}
    message = pb.UpsertRequest(
        collection=name,
        items=[
            pb.Item(id=0, vector=vector(np.zeros(1000))),
            pb.Item(id=item["id"], label=item.get("label", ""), vector=vector(item["vector"])),
        ],
    )
    error = rpc_error(stub.Upsert, iter([message]))
    assert error.code() == code and words in error.details()
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).row_count == 0


def test_delete_by_ids_and_by_filter(stub) -> None:
    name = new_collection(stub, dim=4)
    data = np.ones((6, 4), np.float32)
    stub.Upsert(upsert_messages(name, data, labels=["a", "a", "b", "b", "c", "c"]))
    by_ids = stub.Delete(pb.DeleteRequest(collection=name, ids=[0, 5, 77]))
    by_filter = stub.Delete(pb.DeleteRequest(collection=name, filter=pb.Filter(labels=["b"])))
    assert (by_ids.deleted_count, by_filter.deleted_count) == (2, 2)
    neither = rpc_error(stub.Delete, pb.DeleteRequest(collection=name))
    assert neither.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).row_count == 2
