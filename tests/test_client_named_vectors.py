"""The client over an embedder of two heads (logits,gem: what `imgsearch up` starts): the
collections it makes carry the GeM vector beside the logits, ingest stores both from one pass,
a search may use either, duplicates compare the GeM vectors at that head's distance, and an
embedder that cannot make a collection's named vector is refused before anything is stored."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedder.config import EmbedderConfig
from embedder.server import Embedder
from imgsearch.client import ImageSearchClient, IngestItem
from imgsearch.errors import FailedPrecondition
from imgsearch.photos import textured_photo
from imgsearch.records import SearchOptions
from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.server import Searcher
from tests.process_helpers import imgsearch

_names = itertools.count()


@pytest.fixture(scope="module")
def searcher(postgres_dsn: str) -> Iterator[Searcher]:
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres_dsn)) as server:
        yield server


def _embedder(head: str) -> Embedder:
    config = EmbedderConfig(address="127.0.0.1:0", weights="random", head=head, device="cpu")
    return Embedder(config).start()


@pytest.fixture(scope="module")
def both() -> Iterator[Embedder]:
    server = _embedder("logits,gem")
    yield server
    server.stop(grace_s=1)


def jpeg(picture, quality: int = 90) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def photos(count: int) -> list[bytes]:
    return [jpeg(textured_photo(seed, (480, 360), scene=seed)) for seed in range(count)]


def client_of(embedder: Embedder, searcher: Searcher) -> ImageSearchClient:
    name = f"both{next(_names)}"
    return ImageSearchClient(
        f"127.0.0.1:{embedder.port}", f"127.0.0.1:{searcher.port}", collection=name
    )


def test_ingest_stores_both_vectors_of_one_pass_and_search_uses_either(
    both: Embedder, searcher: Searcher
) -> None:
    pictures = photos(12)
    with client_of(both, searcher) as client:
        report = client.ingest([IngestItem(id=i, image=p) for i, p in enumerate(pictures)])
        assert report.inserted == 12 and not report.failed
        (gem,) = client.describe_collection().vectors
        head = client.model_info().head_named("gem")
        assert head is not None and (gem.name, gem.dim) == ("gem", head.dim)
        assert gem.model_fingerprint == head.fingerprint != client.model_info().fingerprint
        stored = client.searcher.Get(
            pb.GetRequest(collection=client.collection, ids=[4], include_vectors=True)
        ).items[0]
        (embedded,) = client.embed([pictures[4]], head="gem")
        assert isinstance(embedded, np.ndarray)
        assert np.allclose(stored.vectors["gem"].values, embedded, atol=1e-5)
        # A smaller, re-compressed copy finds its picture by either vector.
        picture = textured_photo(4, (480, 360), scene=4).resize((432, 324))
        copy = jpeg(picture, quality=75)
        by_gem = client.search_image(copy, top_k=3, options=SearchOptions(vector="gem"))
        by_logits = client.search_image(copy, top_k=3)
        assert by_gem[0].id == 4 and by_logits[0].id == 4
        # Each in its own space: GeM vectors are unit length, so their distances are below 2.
        assert by_gem[0].distance < 2 and by_gem[0].distance != by_logits[0].distance


def test_duplicates_compare_the_gem_vectors_at_the_gem_heads_distance(
    both: Embedder, searcher: Searcher
) -> None:
    pictures = photos(10)
    original = textured_photo(3, (480, 360), scene=3)
    pictures.append(jpeg(original.resize((400, 300)), quality=80))  # id 10: a copy of 3
    with client_of(both, searcher) as client:
        client.ingest([IngestItem(id=i, image=p) for i, p in enumerate(pictures)])
        assert client.duplicates_vector() == "gem"
        gem_head = client.model_info().head_named("gem")
        assert gem_head is not None
        distance = client.suggested_duplicate_distance()
        assert distance == gem_head.duplicate_distance != client.model_info().duplicate_distance
        groups = client.find_duplicates(distance)
        assert [sorted(m.id for m in g.members) for g in groups] == [[3, 10]]


def test_an_embedder_without_the_collections_named_vector_is_refused(
    both: Embedder, searcher: Searcher
) -> None:
    logits_only = _embedder("logits")
    try:
        with client_of(both, searcher) as client:
            client.ensure_collection()
            name = client.collection
        with ImageSearchClient(
            f"127.0.0.1:{logits_only.port}", f"127.0.0.1:{searcher.port}", collection=name
        ) as other:
            with pytest.raises(FailedPrecondition, match="--head logits,gem"):
                other.ingest([IngestItem(id=1, image=photos(1)[0])])
            assert other.stats().row_count == 0
            # A collection made by the one-head embedder works with the two-head one, as before.
            other.ingest([IngestItem(id=1, image=photos(1)[0])], collection=f"{name}_one")
        with client_of(both, searcher) as client:
            report = client.ingest([IngestItem(id=2, image=photos(2)[1])], collection=f"{name}_one")
            assert report.inserted == 1 and client.duplicates_vector(f"{name}_one") == ""
    finally:
        logits_only.stop(grace_s=1)


def test_the_cli_lists_searches_and_describes_the_named_vector(
    both: Embedder, searcher: Searcher, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, data in enumerate(photos(6)):
        (folder / f"{n:02d}.jpg").write_bytes(data)
    name = f"cli{next(_names)}"
    options = (
        "--embedder", f"127.0.0.1:{both.port}", "--searcher", f"127.0.0.1:{searcher.port}",
        "--collection", name,
    )  # fmt: skip
    assert imgsearch("ingest", str(folder), *options).returncode == 0
    listed = imgsearch("collections", *options)
    assert listed.returncode == 0 and "gem (1000-d)" in listed.stdout, listed.stderr
    stats = imgsearch("stats", "--vector", "gem", *options)
    assert f"collection      {name}, vector gem" in stats.stdout, stats.stdout + stats.stderr
    assert "rows            6" in stats.stdout
    image = folder / "02.jpg"
    found = imgsearch("search", str(image), "--top-k", "3", "--vector", "gem", "--json", *options)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["uri"] == str(image.resolve()) and abs(float(hits[0]["distance"])) < 1e-3
    unknown = imgsearch("search", str(image), "--vector", "sift", *options)
    assert unknown.returncode == 2 and "has no vector named 'sift'" in unknown.stderr
