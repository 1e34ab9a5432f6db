"""Every documented limit (README, "Limits"), crossed by one: the request gets
RESOURCE_EXHAUSTED or INVALID_ARGUMENT with a message naming the limit and its value, and the
server keeps serving. Servers run with small limits so crossing them is cheap."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch.v1 import embedder_pb2 as epb
from imgsearch.v1 import embedder_pb2_grpc, searcher_pb2_grpc
from imgsearch.v1 import searcher_pb2 as spb
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images
from tests.searcher_helpers import vector

EMBEDDER_LIMITS = dict(
    max_image_bytes=20_000,
    max_image_pixels=100 * 100,
    max_images_per_request=4,
    max_concurrent_rpcs=2,
    max_message_bytes=256 * 1024,
)
SEARCHER_LIMITS = dict(
    max_top_k=50, max_items_per_message=10, max_concurrent_rpcs=2, max_message_bytes=256 * 1024
)
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    config = EmbedderConfig(
        address="127.0.0.1:0", weights="random", device="cpu", **EMBEDDER_LIMITS
    )
    with Embedder(config) as server:
        yield server


@pytest.fixture(scope="module")
def searcher(postgres_dsn: str) -> Iterator[Searcher]:
    config = SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn, **SEARCHER_LIMITS)
    with Searcher(config) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = searcher_pb2_grpc.SearcherServiceStub(channel)
            stub.CreateCollection(spb.CreateCollectionRequest(name="limits", dim=2), timeout=10)
        yield server


@pytest.fixture()
def estub(embedder: Embedder) -> Iterator[embedder_pb2_grpc.EmbedderServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{embedder.port}") as channel:
        yield embedder_pb2_grpc.EmbedderServiceStub(channel)
        assert _serving(channel)


@pytest.fixture()
def sstub(searcher: Searcher) -> Iterator[searcher_pb2_grpc.SearcherServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{searcher.port}") as channel:
        yield searcher_pb2_grpc.SearcherServiceStub(channel)
        assert _serving(channel)


def _serving(channel: grpc.Channel) -> bool:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(status.status == health_pb2.HealthCheckResponse.SERVING)


def refused(call, request, code: grpc.StatusCode, *names: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    assert raised.value.code() == code, raised.value.details()
    message = raised.value.details()
    for name in names:
        assert name in message, (name, message)
    return message


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "gray").save(buffer, "PNG")
    return buffer.getvalue()


# -- the embedder -------------------------------------------------------------------------------


def test_bytes_per_image(estub) -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "BMP")  # ~24 kB, under the pixel limit
    request = epb.EmbedRequest(images=[epb.Image(key="big", data=buffer.getvalue())])
    (result,) = estub.Embed(request, timeout=30).results
    assert result.error.code == EXHAUSTED.value[0]
    assert "the limit is 20000 bytes (max_image_bytes)" in result.error.message


def test_pixels_per_image(estub) -> None:
    request = epb.EmbedRequest(images=[epb.Image(key="wide", data=_png(101, 100))])
    (result,) = estub.Embed(request, timeout=30).results
    assert result.error.code == EXHAUSTED.value[0]
    assert "101×100 = 10100 pixels; the limit is 10000 pixels (max_image_pixels)" in (
        result.error.message
    )
    at_limit = epb.EmbedRequest(images=[epb.Image(key="ok", data=_png(100, 100))])
    assert len(estub.Embed(at_limit, timeout=30).results[0].vector.values) == 1000


def test_images_per_request(estub) -> None:
    five = [epb.Image(key=str(i), data=images.jpeg(i, (32, 32))) for i in range(5)]
    refused(
        estub.Embed,
        epb.EmbedRequest(images=five),
        EXHAUSTED,
        "the limit is 4",
        "max_images_per_request",
    )
    assert len(estub.Embed(epb.EmbedRequest(images=five[:4]), timeout=30).results) == 4


MESSAGE_LIMIT = "the limit is 262144 bytes (max_message_bytes)"


def _embed_request_of(size: int) -> epb.EmbedRequest:
    """An Embed request whose encoding is exactly `size` bytes."""
    request = epb.EmbedRequest(images=[epb.Image(key="k", data=b"")])
    overhead = request.ByteSize()
    for data_bytes in range(size - overhead, size - overhead - 8, -1):
        request.images[0].data = b"\0" * data_bytes
        if request.ByteSize() == size:
            return request
    raise AssertionError(f"no request of {size} bytes")


def test_embedder_message_size(estub) -> None:
    over = _embed_request_of(256 * 1024 + 1)
    refused(estub.Embed, over, EXHAUSTED, f"a message of {256 * 1024 + 1} bytes; {MESSAGE_LIMIT}")
    # At the limit the message is taken; its one image is then over max_image_bytes.
    (result,) = estub.Embed(_embed_request_of(256 * 1024), timeout=30).results
    assert "(max_image_bytes)" in result.error.message


def test_embedder_message_size_in_a_stream_after_answered_messages(estub) -> None:
    good = epb.EmbedStreamRequest(images=[epb.Image(key="a", data=images.jpeg(1, (32, 32)))])
    too_big = epb.EmbedStreamRequest(images=[epb.Image(key="b", data=b"\0" * (300 * 1024))])

    def requests() -> Iterator[epb.EmbedStreamRequest]:
        yield good
        yield too_big

    answered = []
    with pytest.raises(grpc.RpcError) as raised:
        for response in estub.EmbedStream(requests(), timeout=30):
            answered.extend(response.results)
    assert raised.value.code() == EXHAUSTED
    assert MESSAGE_LIMIT in raised.value.details()
    assert [r.key for r in answered] == ["a"]


def test_messages_far_over_the_limit_get_grpcs_own_refusal(estub, sstub) -> None:
    # Past twice the limit gRPC's core refuses the message before our code sees it.
    over = epb.EmbedRequest(images=[epb.Image(data=b"\0" * (600 * 1024))])
    refused(estub.Embed, over, EXHAUSTED, "larger than max")
    search = spb.SearchRequest(collection="limits", vector=vector(np.zeros(160_000)), top_k=1)
    refused(sstub.Search, search, EXHAUSTED, "larger than max")


def test_embedder_concurrent_rpcs(embedder: Embedder, estub) -> None:
    _hold_two_streams_then_cross(
        lambda requests: estub.EmbedStream(requests, timeout=60),
        lambda: estub.GetModelInfo(epb.GetModelInfoRequest(), timeout=10),
        epb.EmbedStreamRequest(images=[epb.Image(key="x", data=images.jpeg(1, (32, 32)))]),
    )


# -- the searcher -------------------------------------------------------------------------------


def test_top_k(sstub) -> None:
    request = spb.SearchRequest(collection="limits", vector=vector([0, 0]), top_k=51)
    refused(sstub.Search, request, INVALID, "between 1 and 50 (max_top_k)", "got 51")


def test_items_per_upsert_message(sstub) -> None:
    items = [spb.Item(id=i, vector=vector([i, 0])) for i in range(11)]
    message = refused(
        lambda r, timeout: sstub.Upsert(iter([r]), timeout=timeout),
        spb.UpsertRequest(collection="limits", items=items),
        EXHAUSTED,
        "11 items in one message; the limit is 10 (max_items_per_message)",
    )
    assert "nothing of it written" in message
    got = sstub.Get(spb.GetRequest(collection="limits", ids=list(range(11))), timeout=10)
    assert list(got.items) == []


def test_filter_labels(sstub) -> None:
    request = spb.SearchRequest(
        collection="limits",
        vector=vector([0, 0]),
        top_k=1,
        filter=spb.Filter(labels=[f"l{i}" for i in range(1001)]),
    )
    refused(sstub.Search, request, EXHAUSTED, "the limit is 1000 (max_filter_labels)")


def test_filter_attributes(sstub) -> None:
    attributes = {f"k{i}": "v" for i in range(65)}
    request = spb.SearchRequest(
        collection="limits",
        vector=vector([0, 0]),
        top_k=1,
        filter=spb.Filter(attributes=attributes),
    )
    refused(sstub.Search, request, INVALID, "65 attributes; the limit is 64 (max_attributes)")


def test_label_bytes_and_attribute_key_bytes(sstub) -> None:
    upsert = lambda r, timeout: sstub.Upsert(iter([r]), timeout=timeout)  # noqa: E731
    long_label = spb.Item(id=1, vector=vector([1, 1]), label="x" * 1025)
    refused(
        upsert,
        spb.UpsertRequest(collection="limits", items=[long_label]),
        INVALID,
        "label is 1025 bytes; the limit is 1024 (max_text_bytes)",
    )
    long_key = spb.Item(id=1, vector=vector([1, 1]), attributes={"k" * 129: "v"})
    refused(
        upsert,
        spb.UpsertRequest(collection="limits", items=[long_key]),
        INVALID,
        "attribute key is 129 bytes; the limit is 128 (max_attribute_key_bytes)",
    )


def test_ids_per_request(sstub) -> None:
    request = spb.GetRequest(collection="limits", ids=list(range(1001)))
    refused(sstub.Get, request, EXHAUSTED, "1001 ids in one request; the limit is 1000")
    refused(
        sstub.Delete,
        spb.DeleteRequest(collection="limits", ids=list(range(1001))),
        EXHAUSTED,
        "(max_ids_per_request)",
    )


def test_searcher_message_size(sstub) -> None:
    search = spb.SearchRequest(collection="limits", vector=vector(np.zeros(70_000)), top_k=1)
    refused(sstub.Search, search, EXHAUSTED, MESSAGE_LIMIT)


def test_searcher_message_size_in_an_upsert_stream_keeps_the_messages_before_it(sstub) -> None:
    first = spb.UpsertRequest(collection="limits", items=[spb.Item(id=71, vector=vector([7, 1]))])
    too_big = spb.UpsertRequest(
        collection="limits", items=[spb.Item(id=72, vector=vector(np.zeros(70_000)))]
    )
    message = refused(
        lambda r, timeout: sstub.Upsert(iter(r), timeout=timeout),
        [first, too_big],
        EXHAUSTED,
        "Upsert message 2 rejected",
        MESSAGE_LIMIT,
        "1 messages, 1 items inserted",
    )
    stored = sstub.Get(spb.GetRequest(collection="limits", ids=[71, 72]), timeout=10)
    assert [item.id for item in stored.items] == [71], message


def test_searcher_concurrent_rpcs(sstub) -> None:
    _hold_two_streams_then_cross(
        lambda requests: sstub.Upsert(requests, timeout=60),
        lambda: sstub.ListCollections(spb.ListCollectionsRequest(), timeout=10),
        spb.UpsertRequest(collection="limits", items=[spb.Item(id=100, vector=vector([7, 7]))]),
    )


def _hold_two_streams_then_cross(open_stream, unary_call, first_message) -> None:  # type: ignore[no-untyped-def]
    """With the limit (2) taken by two open client streams, a third RPC is refused with the
    limit named; health still answers; once the streams end, calls succeed again."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def requests() -> Iterator[object]:
        yield first_message
        started.release()
        release.wait(30)

    outcomes: list[object] = []

    def hold() -> None:
        outcome = open_stream(requests())
        outcomes.append(list(outcome) if hasattr(outcome, "__iter__") else outcome)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for holder in holders:
        holder.start()
    for _ in holders:
        assert started.acquire(timeout=30)
    try:
        # The streams' first messages are sent; the server may not have admitted both yet.
        deadline = time.monotonic() + 10
        while True:
            try:
                unary_call()
            except grpc.RpcError as exc:
                assert exc.code() == EXHAUSTED
                assert "2 RPCs in progress; the limit is 2 (max_concurrent_rpcs)" in exc.details()
                break
            assert time.monotonic() < deadline, "the third RPC was never refused"
            time.sleep(0.05)
    finally:
        release.set()
        for holder in holders:
            holder.join(30)
    assert len(outcomes) == 2  # the held streams themselves completed
    unary_call()
