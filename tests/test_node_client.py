"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader from npm, loading our .proto files)
embeds, searches with a deadline, and gets INVALID_ARGUMENT with a readable message for a bad
request. The test installs the npm packages itself (pinned, package-lock.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch.client import ImageSearchClient, IngestItem
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images
from tests.conftest import ROOT

NODE_DIR = ROOT / "clients" / "node"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed: the Node.js interop check needs them",
)


@pytest.fixture(scope="module")
def node_modules() -> None:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR, check=True, capture_output=True, timeout=300,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    with (
        Embedder(EmbedderConfig(address="127.0.0.1:0", weights="random", device="cpu")) as embedder,
        Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as searcher,
    ):
        yield f"127.0.0.1:{embedder.port}", f"127.0.0.1:{searcher.port}"


def test_a_node_client_embeds_searches_and_reads_errors(node_modules, stack, tmp_path) -> None:
    embedder, searcher = stack
    data = [images.jpeg(i, (200, 150)) for i in range(5)]
    with ImageSearchClient(embedder, searcher, collection="node") as client:
        client.ingest([IngestItem(id=i, image=d, label=f"n{i}") for i, d in enumerate(data)])
    query = tmp_path / "query.jpg"
    query.write_bytes(data[2])
    result = subprocess.run(
        ["node", str(NODE_DIR / "call.js"), embedder, searcher, str(query), "node"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["embed"] == {"code": "OK", "dim": 1000}
    assert out["search"]["code"] == "OK"
    assert out["search"]["hits"][0]["id"] == "2" and out["search"]["hits"][0]["label"] == "n2"
    assert out["bad"]["code"] == "INVALID_ARGUMENT"
    assert "vector has 3 values" in out["bad"]["message"] and "dim 1000" in out["bad"]["message"]
