"""TLS, mutual TLS and bearer tokens on both servers and in the client, with certificates made
by the test. A read-only token can search but not write; a wrong token can do nothing but
health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch._channel import ChannelSecurity
from imgsearch.client import ImageSearchClient
from imgsearch.errors import PermissionDenied, Unauthenticated, Unavailable
from imgsearch.features import FeatureRow
from imgsearch.v1 import embedder_pb2 as epb
from imgsearch.v1 import embedder_pb2_grpc, searcher_pb2_grpc
from imgsearch.v1 import searcher_pb2 as spb
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images
from tests.certs import CertificateAuthority
from tests.searcher_helpers import vector

WRITE_TOKEN = "w-7c1f0e2d9b"
READ_TOKEN = "r-41a8d3c6e5"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# role token\nwrite {WRITE_TOKEN}\nread {READ_TOKEN}\n")
    return path


def _secure_channel(port: int, ca: CertificateAuthority, client: str = "") -> grpc.Channel:
    pair = ca.issue(client, server=False) if client else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem.read_bytes(),
        private_key=pair.key.read_bytes() if pair else None,
        certificate_chain=pair.cert.read_bytes() if pair else None,
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="")
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


def _code(call, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- TLS and mutual TLS -------------------------------------------------------------------------


def test_tls_searcher_serves_tls_clients_and_refuses_plaintext(
    postgres_dsn: str, ca: CertificateAuthority
) -> None:
    server_pair = ca.issue("searcher", server=True)
    config = SearcherConfig(
        address="127.0.0.1:0",
        dsn=postgres_dsn,
        tls_cert=str(server_pair.cert),
        tls_key=str(server_pair.key),
    )
    with Searcher(config) as searcher:
        security = ChannelSecurity(tls=True, ca_file=str(ca.pem))
        with ImageSearchClient(
            None, f"localhost:{searcher.port}", collection="tls", security=security, timeout_s=10
        ) as client:
            client.searcher.CreateCollection(spb.CreateCollectionRequest(name="tls", dim=2))
            assert [
                c.name
                for c in client.searcher.ListCollections(spb.ListCollectionsRequest()).collections
            ].count("tls") == 1
        with grpc.insecure_channel(f"127.0.0.1:{searcher.port}") as plain:
            stub = searcher_pb2_grpc.SearcherServiceStub(plain)
            assert _code(stub.ListCollections, spb.ListCollectionsRequest()) == (
                grpc.StatusCode.UNAVAILABLE
            )
        # A CA the server's certificate does not chain to is not trusted.
        stranger = CertificateAuthority(ca.directory, name="stranger CA")
        with _secure_channel(searcher.port, stranger) as untrusted:
            stub = searcher_pb2_grpc.SearcherServiceStub(untrusted)
            assert _code(stub.ListCollections, spb.ListCollectionsRequest()) == (
                grpc.StatusCode.UNAVAILABLE
            )


def test_mutual_tls_embedder_requires_a_client_certificate_from_its_ca(
    ca: CertificateAuthority,
) -> None:
    server_pair = ca.issue("embedder", server=True)
    config = EmbedderConfig(
        address="127.0.0.1:0",
        weights="random",
        device="cpu",
        tls_cert=str(server_pair.cert),
        tls_key=str(server_pair.key),
        tls_client_ca=str(ca.pem),
    )
    request = epb.EmbedRequest(images=[epb.Image(key="a", data=images.jpeg(1))])
    with Embedder(config) as embedder:
        with _secure_channel(embedder.port, ca, client="worker") as channel:
            (result,) = (
                embedder_pb2_grpc.EmbedderServiceStub(channel).Embed(request, timeout=30).results
            )
            assert len(result.vector.values) == 1000
        with _secure_channel(embedder.port, ca) as no_client_cert:
            stub = embedder_pb2_grpc.EmbedderServiceStub(no_client_cert)
            assert _code(stub.Embed, request) == grpc.StatusCode.UNAVAILABLE
        # The client library with a certificate, as `imgsearch --tls-cert/--tls-key` uses it.
        pair = ca.issue("cli", server=False)
        security = ChannelSecurity(
            tls=True, ca_file=str(ca.pem), cert_file=str(pair.cert), key_file=str(pair.key)
        )
        with ImageSearchClient(f"localhost:{embedder.port}", None, security=security) as client:
            assert client.model_info().dim == 1000
        without = ChannelSecurity(tls=True, ca_file=str(ca.pem))
        with ImageSearchClient(
            f"localhost:{embedder.port}", None, security=without, timeout_s=5
        ) as client:
            with pytest.raises(Unavailable):
                client.model_info()


# -- bearer tokens ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_searcher(postgres_dsn: str, tokens_file: Path) -> Iterator[Searcher]:
    config = SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn, tokens_file=str(tokens_file))
    with Searcher(config) as searcher:
        with grpc.insecure_channel(f"127.0.0.1:{searcher.port}") as channel:
            stub = searcher_pb2_grpc.SearcherServiceStub(channel)
            auth = (("authorization", f"Bearer {WRITE_TOKEN}"),)
            stub.CreateCollection(
                spb.CreateCollectionRequest(name="guarded", dim=2), timeout=10, metadata=auth
            )
            stub.Upsert(
                iter(
                    [
                        spb.UpsertRequest(
                            collection="guarded", items=[spb.Item(id=1, vector=vector([1.0, 0.0]))]
                        )
                    ]
                ),
                timeout=10,
                metadata=auth,
            )
        yield searcher


def _every_searcher_call(stub: searcher_pb2_grpc.SearcherServiceStub) -> dict[str, object]:
    """One valid request for each method, as (callable, request)."""
    return {
        "Search": (stub.Search, spb.SearchRequest(collection="guarded", id=1, top_k=1)),
        "Get": (stub.Get, spb.GetRequest(collection="guarded", ids=[1])),
        "ListItems": (stub.ListItems, spb.ListItemsRequest(collection="guarded", page_size=5)),
        "GetStats": (stub.GetStats, spb.GetStatsRequest(collection="guarded")),
        "GetCollection": (stub.GetCollection, spb.GetCollectionRequest(name="guarded")),
        "ListCollections": (stub.ListCollections, spb.ListCollectionsRequest()),
        "CreateCollection": (
            stub.CreateCollection,
            spb.CreateCollectionRequest(name="guarded_new", dim=2),
        ),
        "Upsert": (
            lambda request, **kw: stub.Upsert(iter([request]), **kw),
            spb.UpsertRequest(
                collection="guarded", items=[spb.Item(id=2, vector=vector([0.0, 1.0]))]
            ),
        ),
        "Delete": (stub.Delete, spb.DeleteRequest(collection="guarded", ids=[2])),
        "DropCollection": (stub.DropCollection, spb.DropCollectionRequest(name="guarded_new")),
    }


WRITES = {"CreateCollection", "Upsert", "Delete", "DropCollection"}


@pytest.mark.parametrize("token", [None, "not-a-token", f"{READ_TOKEN}x"])
def test_without_a_valid_token_only_health_answers(guarded_searcher: Searcher, token) -> None:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(f"127.0.0.1:{guarded_searcher.port}") as channel:
        stub = searcher_pb2_grpc.SearcherServiceStub(channel)
        for name, (call, request) in _every_searcher_call(stub).items():
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=10, metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert "authorization: Bearer" in raised.value.details()
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=10,
            metadata=metadata,
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(answers)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_a_read_only_token_searches_but_cannot_write(guarded_searcher: Searcher) -> None:
    read = (("authorization", f"Bearer {READ_TOKEN}"),)
    with grpc.insecure_channel(f"127.0.0.1:{guarded_searcher.port}") as channel:
        stub = searcher_pb2_grpc.SearcherServiceStub(channel)
        for name, (call, request) in _every_searcher_call(stub).items():
            if name in WRITES:
                with pytest.raises(grpc.RpcError) as raised:
                    call(request, timeout=10, metadata=read)
                assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
                assert "read-only" in raised.value.details()
            else:
                call(request, timeout=10, metadata=read)  # succeeds
        hits = stub.Search(
            spb.SearchRequest(collection="guarded", id=1, top_k=5), timeout=10, metadata=read
        ).hits
        assert [hit.id for hit in hits] == [1]  # the refused Upsert wrote nothing


def test_a_write_token_can_do_everything(guarded_searcher: Searcher) -> None:
    write = (("authorization", f"Bearer {WRITE_TOKEN}"),)
    with grpc.insecure_channel(f"127.0.0.1:{guarded_searcher.port}") as channel:
        stub = searcher_pb2_grpc.SearcherServiceStub(channel)
        for _name, (call, request) in _every_searcher_call(stub).items():
            call(request, timeout=10, metadata=write)


def test_the_client_sends_its_token_and_reports_refusals_by_kind(
    guarded_searcher: Searcher,
) -> None:
    address = f"127.0.0.1:{guarded_searcher.port}"
    row = FeatureRow(line=1, id=9, label="x", vector=np.array([1.0, 1.0], dtype=np.float32))
    with ImageSearchClient(None, address, security=ChannelSecurity()) as client:
        with pytest.raises(Unauthenticated, match="bearer token"):
            client.search_id(1, top_k=1, collection="guarded")
    with ImageSearchClient(None, address, security=ChannelSecurity(token=READ_TOKEN)) as client:
        assert [hit.id for hit in client.search_id(1, top_k=1, collection="guarded")] == [1]
        with pytest.raises(PermissionDenied, match="read-only"):
            client.import_features([row], collection="guarded")
    with ImageSearchClient(None, address, security=ChannelSecurity(token=WRITE_TOKEN)) as client:
        assert client.import_features([row], collection="guarded") == 1


def test_the_embedder_takes_tokens_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGSEARCH_READ_TOKEN", READ_TOKEN)
    config = EmbedderConfig(address="127.0.0.1:0", weights="random", device="cpu")
    request = epb.EmbedRequest(images=[epb.Image(key="a", data=images.jpeg(2))])
    with Embedder(config) as embedder:
        with grpc.insecure_channel(f"127.0.0.1:{embedder.port}") as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            assert _code(stub.Embed, request) == grpc.StatusCode.UNAUTHENTICATED
            read = (("authorization", f"Bearer {READ_TOKEN}"),)
            assert len(stub.Embed(request, timeout=30, metadata=read).results) == 1
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
