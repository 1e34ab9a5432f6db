"""Cases adapted from gRPC's interop suite, against both services: each gets the status a
generic gRPC client expects, and the server keeps serving afterwards."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch.v1 import embedder_pb2 as epb
from imgsearch.v1 import searcher_pb2 as spb
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images
from tests.embedder_helpers import embedder_stub
from tests.searcher_helpers import searcher_stub, vector

CAP = 1 << 20  # the embedder under test accepts messages up to 1 MiB


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    config = EmbedderConfig(
        address="127.0.0.1:0", weights="random", device="cpu", max_message_bytes=CAP
    )
    with Embedder(config) as server:
        yield server


@pytest.fixture(scope="module")
def searcher(postgres_dsn: str) -> Iterator[Searcher]:
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as server:
        yield server


@pytest.fixture()
def estub(embedder: Embedder) -> Iterator[object]:
    channel, stub = embedder_stub(embedder.port)
    with channel:
        yield stub
    _assert_serving(embedder.port, "imgsearch.v1.EmbedderService")


@pytest.fixture()
def sstub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub
    _assert_serving(searcher.port, "imgsearch.v1.SearcherService")


def _assert_serving(port: int, service: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def _code(call, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        assert exc.details(), "every error carries a message"
        return exc.code()
    return grpc.StatusCode.OK


def test_empty_request(estub, sstub) -> None:
    assert list(estub.Embed(epb.EmbedRequest(), timeout=10).results) == []
    assert _code(sstub.Search, spb.SearchRequest(), timeout=10) == grpc.StatusCode.INVALID_ARGUMENT


def test_large_request_at_the_size_cap(estub) -> None:
    just_under = epb.EmbedRequest(images=[epb.Image(data=b"\xff" * (CAP - 64))])
    assert just_under.ByteSize() <= CAP
    (result,) = estub.Embed(just_under, timeout=30).results  # the RPC succeeds;
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # the image does not
    over = epb.EmbedRequest(images=[epb.Image(data=b"\xff" * (CAP + 1))])
    assert _code(estub.Embed, over, timeout=30) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_streaming(sstub) -> None:
    sstub.CreateCollection(spb.CreateCollectionRequest(name="interop", dim=2), timeout=10)
    messages = [
        spb.UpsertRequest(collection="interop", items=[spb.Item(id=i, vector=vector([i, 1.0]))])
        for i in range(10)
    ]
    summary = sstub.Upsert(iter(messages), timeout=30)
    assert (summary.inserted_count, summary.message_count) == (10, 10)


def test_status_code_and_message(sstub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        sstub.Search(
            spb.SearchRequest(collection="interop", vector=vector([1, 2, 3]), top_k=1), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "query: vector has 3 values; collection 'interop' has dim 2"


@pytest.mark.parametrize("service", ["imgsearch.v1.SearcherService", "imgsearch.v1.NoSuchService"])
def test_unimplemented_method(searcher, service: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{searcher.port}") as channel:
        method = channel.unary_unary(f"/{service}/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as raised:
            method(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cancel_after_begin(estub) -> None:
    never_sent = threading.Event()

    def requests() -> Iterator[epb.EmbedStreamRequest]:
        never_sent.wait(10)
        return
        yield  # a generator that sends nothing

    call = estub.EmbedStream(requests(), timeout=30)
    call.cancel()
    never_sent.set()
    with pytest.raises(grpc.RpcError) as raised:
        next(call)
    assert raised.value.code() == grpc.StatusCode.CANCELLED


def test_cancel_after_first_response(estub) -> None:
    data = images.jpeg(1, (96, 96))
    requests = (epb.EmbedStreamRequest(images=[epb.Image(data=data)]) for _ in range(50))
    call = estub.EmbedStream(requests, timeout=60)
    first = next(call)
    assert len(first.results[0].vector.values) == 1000
    call.cancel()
    with pytest.raises(grpc.RpcError) as raised:
        for _ in call:
            pass
    assert raised.value.code() == grpc.StatusCode.CANCELLED


def test_deadline_on_a_slow_call(estub) -> None:
    many = epb.EmbedRequest(images=[epb.Image(data=images.jpeg(i, (320, 240))) for i in range(64)])
    assert _code(estub.Embed, many, timeout=0.05) == grpc.StatusCode.DEADLINE_EXCEEDED
