"""The client library and the CLI against real services in this process: feature files,
resumable ingest, several embedder replicas, and the model-fingerprint guard."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch.client import ImageSearchClient, IngestItem
from imgsearch.errors import FailedPrecondition, InvalidArgument
from imgsearch.features import format_line
from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests import images
from tests.conftest import ROOT
from tests.process_helpers import imgsearch, offline_env


@pytest.fixture(scope="module")
def searcher(postgres_dsn: str) -> Iterator[Searcher]:
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as server:
        yield server


def _embedder(seed: int = 0) -> Embedder:
    return Embedder(
        EmbedderConfig(address="127.0.0.1:0", weights="random", seed=seed, device="cpu")
    ).start()


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    server = _embedder()
    yield server
    server.stop(grace_s=1)


def test_feature_files_import_search_and_export_like_the_tutorial(searcher, tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = rng.gamma(1.0, size=(1000, 1000)).astype(np.float32)
    ids = np.arange(4000, 5000)
    source = tmp_path / "features.txt"
    with source.open("w") as out:
        for i, v in zip(ids, data, strict=True):
            out.write(format_line(int(i), f"class{i % 100}", v))
    target = ("--searcher", f"127.0.0.1:{searcher.port}", "--collection", "tutorial")
    imported = imgsearch("import-features", str(source), *target)
    assert imported.returncode == 0, imported.stderr
    assert "imported 1000 rows" in imported.stdout
    # The tutorial queries with image 4999's own vector.
    found = imgsearch("search", "--id", "4999", "--top-k", "10", "--json", *target)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    distances = np.linalg.norm(data.astype(np.float64) - data[-1], axis=1)
    truth = ids[np.argsort(distances, kind="stable")[:10]].tolist()
    assert [h["id"] for h in hits] == truth
    assert np.allclose([h["distance"] for h in hits], np.sort(distances)[:10], atol=1e-3)
    exported = tmp_path / "exported.txt"
    result = imgsearch("export-features", str(exported), *target)
    assert result.returncode == 0, result.stderr
    assert exported.read_bytes() == source.read_bytes()


def test_a_malformed_feature_line_is_named_and_its_batch_is_not_half_loaded(
    searcher, tmp_path
) -> None:
    lines = [format_line(i, "ok", np.full(8, i, np.float32)) for i in range(1200)]
    lines[1100] = "1100|broken|{1,2,three,4,5,6,7,8}\n"
    source = tmp_path / "bad.txt"
    source.write_text("".join(lines))
    target = ("--searcher", f"127.0.0.1:{searcher.port}", "--collection", "half")
    result = imgsearch("import-features", str(source), *target)
    assert result.returncode == 2
    assert "line 1101" in result.stderr and "not a number" in result.stderr
    assert "stored 1000 rows before it" in result.stderr
    with ImageSearchClient(None, f"127.0.0.1:{searcher.port}", collection="half") as client:
        assert client.stats().row_count == 1000  # two whole messages of 500; none of the third


def test_ingest_tells_the_searcher_how_many_images_it_will_store(
    searcher, embedder, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    # A large first load into an empty collection then has its rows' cells written as they
    # arrive (tests/test_load_cells.py).
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(12):
        (folder / f"{n}.jpg").write_bytes(images.jpeg(n, (320, 240)))
    target = (
        "--embedder", f"127.0.0.1:{embedder.port}",
        "--searcher", f"127.0.0.1:{searcher.port}",
        "--collection", "announced",
    )  # fmt: skip
    with caplog.at_level("INFO", logger="searcher.loader"):
        result = imgsearch("ingest", str(folder), *target)
    assert result.returncode == 0, result.stderr
    assert "bulk load into empty collection 'announced' (12 items announced)" in caplog.text


def test_killing_ingest_half_way_and_running_it_again_stores_each_image_once(
    searcher, embedder, tmp_path
) -> None:
    folder = tmp_path / "photos" / "things"
    folder.mkdir(parents=True)
    for n in range(300):
        (folder / f"{n}.jpg").write_bytes(images.jpeg(n, (320, 240)))
    target = (
        "--embedder", f"127.0.0.1:{embedder.port}",
        "--searcher", f"127.0.0.1:{searcher.port}",
        "--collection", "resumed",
    )  # fmt: skip
    command = [sys.executable, "-m", "imgsearch.cli", "ingest", str(tmp_path / "photos"), *target]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with ImageSearchClient(None, f"127.0.0.1:{searcher.port}", collection="resumed") as client:
        deadline = time.monotonic() + 120
        while _rows(client) < 60:  # part of it stored
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        first.kill()
        first.communicate()
        stored_before = _rows(client)
        assert 0 < stored_before < 300
        again = imgsearch("ingest", str(tmp_path / "photos"), *target)
        assert again.returncode == 0, again.stderr
        assert f"skipped {stored_before} already stored" in again.stdout
        assert _rows(client) == 300


def _rows(client: ImageSearchClient) -> int:
    try:
        return int(client.stats().row_count)
    except Exception:  # the collection may not exist yet
        return 0


def test_two_embedders_behind_one_client_share_calls_and_losing_one_loses_nothing(
    searcher,
) -> None:
    first, second = _embedder(), _embedder()
    data = [images.jpeg(i, (160, 120)) for i in range(8)]
    try:
        assert first.model.info.fingerprint == second.model.info.fingerprint  # type: ignore[union-attr]
        address = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        with ImageSearchClient(address, f"127.0.0.1:{searcher.port}", timeout_s=30) as client:
            for _ in range(20):
                assert all(isinstance(v, np.ndarray) for v in client.embed(data[:2]))
            assert first.batcher.stats.images > 0 and second.batcher.stats.images > 0  # type: ignore[union-attr]
            outcomes: list[object] = []
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    try:
                        outcomes.append(len(client.embed(data)))
                    except Exception as exc:  # counted below
                        outcomes.append(exc)

            worker = threading.Thread(target=traffic)
            worker.start()
            time.sleep(1.0)
            first.stop(grace_s=5)
            time.sleep(2.0)
            stop.set()
            worker.join()
        assert outcomes and all(o == len(data) for o in outcomes), [
            o for o in outcomes if o != len(data)
        ][:3]
    finally:
        first.stop(grace_s=1)
        second.stop(grace_s=1)


class _CancelsFirstCalls(grpc.GenericRpcHandler):
    """A hop in front of a real embedder that cancels its first `cancel` calls unanswered, as a
    replica does with calls that reach it just as it begins to stop, and forwards the rest."""

    def __init__(self, upstream: grpc.Channel, cancel: int) -> None:
        self.upstream, self.left_to_cancel, self.calls = upstream, cancel, 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        forward = self.upstream.unary_unary(details.method)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            if self.left_to_cancel > 0:
                self.left_to_cancel -= 1
                context.abort(grpc.StatusCode.CANCELLED, "server shutting down")
            return forward(request, timeout=30)

        return grpc.unary_unary_rpc_method_handler(handle)


def test_an_embed_call_cancelled_by_a_stopping_replica_is_retried(embedder, searcher) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{embedder.port}") as upstream:
        hop = _CancelsFirstCalls(upstream, cancel=2)
        server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[hop])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with ImageSearchClient(f"127.0.0.1:{port}", f"127.0.0.1:{searcher.port}") as client:
                vectors = client.embed([images.jpeg(3, (160, 120))])
        finally:
            server.stop(grace=None)
    assert len(vectors) == 1 and isinstance(vectors[0], np.ndarray)
    assert hop.calls == 3  # two cancelled, the third answered


def test_images_searched_together_get_what_each_would_alone_and_errors_in_place(
    searcher, embedder
) -> None:
    photos = [images.jpeg(i, (320, 240)) for i in range(6)]
    with ImageSearchClient(
        f"127.0.0.1:{embedder.port}", f"127.0.0.1:{searcher.port}", collection="together"
    ) as client:
        client.ingest(IngestItem(i, p, label="photo") for i, p in enumerate(photos))
        queries = [photos[0], b"not an image", photos[3], photos[5]]
        outcomes = client.search_images(queries, top_k=3)
        assert isinstance(outcomes[1], InvalidArgument)
        for i in (0, 2, 3):
            assert outcomes[i] == client.search_image(queries[i], top_k=3)
        assert [o[0].id for o in (outcomes[0], outcomes[2], outcomes[3])] == [0, 3, 5]
        vectors = client.embed([photos[1], photos[2]])
        wrong = np.ones(7, dtype=np.float32)
        found = client.search_vectors([vectors[0], wrong, vectors[1]], top_k=2)
        assert [hits[0].id for hits in (found[0], found[2])] == [1, 2]
        assert isinstance(found[1], InvalidArgument) and "7" in str(found[1])


def test_a_collection_filled_by_another_model_is_refused(searcher, embedder) -> None:
    with ImageSearchClient(
        f"127.0.0.1:{embedder.port}", f"127.0.0.1:{searcher.port}", collection="other_model"
    ) as client:
        client.searcher.CreateCollection(
            pb.CreateCollectionRequest(name="other_model", dim=1000, model_fingerprint="sha256:x")
        )
        item = IngestItem(id=1, image=images.jpeg(1))
        with pytest.raises(FailedPrecondition, match="filled by model sha256:x") as raised:
            client.ingest([item])
        assert "--force" in str(raised.value)
        with pytest.raises(FailedPrecondition):
            client.search_image(images.jpeg(1))
        client.force = True
        assert client.ingest([item]).stored == 1


def test_tutorial_paths_are_stable_ids(tmp_path: Path) -> None:
    from imgsearch.cli.ingest import stable_id

    path = tmp_path / "a" / "b.jpg"
    assert stable_id(path) == stable_id(tmp_path / "a" / ".." / "a" / "b.jpg")
    assert stable_id(path) != stable_id(tmp_path / "a" / "c.jpg")
    assert 0 <= stable_id(path) < 1 << 63


def test_cifar100_items_carry_dataset_indices_and_class_names(searcher, embedder) -> None:
    from types import SimpleNamespace

    from imgsearch.cifar import cifar100_item

    # The attributes torchvision's CIFAR100 exposes, with generated pixels.
    rng = np.random.default_rng(0)
    dataset = SimpleNamespace(
        data=rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8),
        targets=[i % 3 for i in range(12)],
        classes=["apple", "aquarium_fish", "baby"],
    )
    items = [cifar100_item(dataset, "train", i) for i in range(12)]
    assert [(i.id, i.label) for i in items][:4] == [
        (0, "apple"), (1, "aquarium_fish"), (2, "baby"), (3, "apple"),
    ]  # fmt: skip
    with ImageSearchClient(
        f"127.0.0.1:{embedder.port}", f"127.0.0.1:{searcher.port}", collection="cifar"
    ) as client:
        assert client.ingest(items).stored == 12
        hits = client.search_image(items[7].image, top_k=1)
        assert (hits[0].id, hits[0].label, hits[0].uri) == (7, "aquarium_fish", "cifar100:train/7")


def test_cifar100_without_a_local_copy_or_network_names_what_to_fetch(searcher, tmp_path) -> None:
    result = imgsearch(
        "ingest", "--cifar100", str(tmp_path),
        "--searcher", f"127.0.0.1:{searcher.port}", "--embedder", "127.0.0.1:9",
        env=offline_env(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cifar-100-python.tar.gz" in result.stderr and str(tmp_path) in result.stderr


def test_a_searcher_restarting_mid_ingest_costs_time_not_data(postgres_dsn, embedder) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = SearcherConfig(address=f"127.0.0.1:{port}", dsn=postgres_dsn)
    first = Searcher(config).start()
    second: Searcher | None = None
    items = [IngestItem(id=i, image=images.jpeg(i, (160, 120)), label="x") for i in range(400)]
    outcome: list[object] = []
    address = (f"127.0.0.1:{embedder.port}", f"127.0.0.1:{port}")
    try:
        with ImageSearchClient(*address, collection="restarted", timeout_s=60) as client:
            worker = threading.Thread(target=lambda: outcome.append(_try(client.ingest, items)))
            worker.start()
            with ImageSearchClient(None, address[1], collection="restarted") as watcher:
                deadline = time.monotonic() + 120
                while _rows(watcher) < 64:
                    assert worker.is_alive() and time.monotonic() < deadline
                    time.sleep(0.02)
            first.stop(grace_s=0)  # mid-stream
            time.sleep(1.0)
            second = Searcher(config).start()
            worker.join(timeout=300)
        assert outcome and not isinstance(outcome[0], BaseException), outcome
        with ImageSearchClient(None, address[1], collection="restarted") as client:
            assert client.stats().row_count == 400
    finally:
        first.stop(grace_s=0)
        if second is not None:
            second.stop(grace_s=0)


def _try(function, *args):  # type: ignore[no-untyped-def]
    try:
        return function(*args)
    except BaseException as exc:  # returned to the test's thread
        return exc


def test_the_readmes_python_example_runs_as_written(
    searcher, embedder, tmp_path, monkeypatch
) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    addresses = f'"127.0.0.1:{embedder.port}", "127.0.0.1:{searcher.port}", collection="readme"'
    assert example.count('"localhost:50051", "localhost:50052"') == 1
    example = example.replace('"localhost:50051", "localhost:50052"', addresses)
    monkeypatch.chdir(tmp_path)
    for number, name in enumerate(("cat.jpg", "query.jpg")):
        (tmp_path / name).write_bytes(images.jpeg(number))
    exec(compile(example, "README.md", "exec"), {})
