"""`buf curl` (our grpcurl stand-in; grpcurl itself is not installable here) talks to both services
through server reflection alone: list, describe, call, and read health — what an engineer poking
the services from a shell does, with no .proto files and no Python."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images

BUF = shutil.which("buf")
pytestmark = pytest.mark.skipif(
    BUF is None, reason="buf (PyPI buf-bin, in the [dev] extra) is absent"
)


def buf_curl(port: int, *args: str, data: object | None = None) -> subprocess.CompletedProcess[str]:
    command = [BUF or "buf", "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args]
    if data is not None:
        command += ["--data", json.dumps(data)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def servers(
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, int]]:
    with (
        Embedder(EmbedderConfig(address="127.0.0.1:0", weights="random", device="cpu")) as embedder,
        Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as searcher,
    ):
        yield embedder.port, searcher.port


def url(port: int, method: str = "") -> str:
    return f"http://127.0.0.1:{port}/{method}"


def test_both_services_are_listed_and_described_through_reflection(servers) -> None:
    embedder, searcher = servers
    listed = buf_curl(embedder, "--list-services", url(embedder))
    assert listed.returncode == 0, listed.stderr
    assert (
        "imgsearch.v1.EmbedderService" in listed.stdout and "grpc.health.v1.Health" in listed.stdout
    )
    methods = buf_curl(searcher, "--list-methods", url(searcher))
    assert methods.returncode == 0, methods.stderr
    for method in ("Search", "Upsert", "ListItems", "GetStats"):
        assert f"imgsearch.v1.SearcherService/{method}" in methods.stdout


def test_embed_and_search_are_callable_with_json(servers) -> None:
    embedder, searcher = servers
    image = base64.b64encode(images.jpeg(3)).decode()
    embedded = buf_curl(
        embedder,
        url(embedder, "imgsearch.v1.EmbedderService/Embed"),
        data={"images": [{"key": "cat", "data": image}, {"key": "junk", "data": "AAAA"}]},
    )
    assert embedded.returncode == 0, embedded.stderr
    results = json.loads(embedded.stdout)["results"]
    assert len(results[0]["vector"]["values"]) == 1000
    assert results[1]["error"]["code"] == 3 and "not an image" in results[1]["error"]["message"]

    created = buf_curl(
        searcher,
        url(searcher, "imgsearch.v1.SearcherService/CreateCollection"),
        data={"name": "buf_demo", "dim": 3},
    )
    assert created.returncode == 0, created.stderr
    upsert = buf_curl(
        searcher,
        url(searcher, "imgsearch.v1.SearcherService/Upsert"),
        data={
            "collection": "buf_demo",
            "items": [{"id": 1, "label": "cat", "vector": {"values": [1, 0, 0]}}],
        },
    )
    assert upsert.returncode == 0, upsert.stderr
    found = buf_curl(
        searcher,
        url(searcher, "imgsearch.v1.SearcherService/Search"),
        data={"collection": "buf_demo", "vector": {"values": [1, 0.1, 0]}, "topK": 5},
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["id"] == "1" and hits[0]["label"] == "cat"


def test_a_bad_request_gets_its_status_and_message(servers) -> None:
    _, searcher = servers
    bad = buf_curl(
        searcher,
        url(searcher, "imgsearch.v1.SearcherService/Search"),
        data={"collection": "buf_demo", "vector": {"values": [1, 0]}, "topK": 5},
    )
    assert bad.returncode != 0
    assert "invalid_argument" in bad.stderr.lower() and "dim 3" in bad.stderr


def test_health_is_readable(servers) -> None:
    for port, service in zip(
        servers, ("imgsearch.v1.EmbedderService", "imgsearch.v1.SearcherService"), strict=True
    ):
        health = buf_curl(port, url(port, "grpc.health.v1.Health/Check"), data={"service": service})
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)["status"] == "SERVING"
