"""Named vectors: a collection whose items carry a second vector (copy detection's "gem" beside
the tutorial's logits), each searched, indexed and kept by its own name, written and deleted
with the item in one transaction, and dropped with the collection. A collection of one vector
works as before. Every test runs on both engines, as tests/test_searcher_service.py's do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from imgsearch.v1 import searcher_pb2 as pb
from searcher.catalogue import named_vector_table
from searcher.schema import CATALOG_SCHEMA, DATA_SCHEMA
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    exact_neighbours,
    rpc_error,
    searcher_on,
    searcher_stub,
    vector,
)

OWN_DIM, GEM_DIM = 48, 32
UPKEEP_S = 300  # a deadline for background builds and checks, not an expected duration
_names = itertools.count()


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


def create(stub, **extra) -> str:  # type: ignore[no-untyped-def]
    """A new collection of OWN_DIM-d vectors with a named GEM_DIM-d cosine vector "gem"."""
    name = f"named{next(_names)}_{np.random.default_rng().integers(1 << 30)}"
    gem = pb.NamedVector(name="gem", dim=GEM_DIM, metric=pb.METRIC_COSINE, model_fingerprint="g1")
    stub.CreateCollection(
        pb.CreateCollectionRequest(name=name, dim=OWN_DIM, vectors=[gem], **extra), timeout=60
    )
    return name


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Own and gem vectors of n items, unrelated to each other: a search that used the wrong
    one would find other neighbours."""
    own = clustered_vectors(n, OWN_DIM, clusters=8, seed=seed)
    gem = clustered_vectors(n, GEM_DIM, clusters=8, seed=seed + 1000)
    return own, gem / np.linalg.norm(gem, axis=1, keepdims=True)


def items(own: np.ndarray, gem: np.ndarray, first_id: int = 0) -> list[pb.Item]:
    return [
        pb.Item(id=first_id + i, label=f"l{i % 3}", vector=vector(o), vectors={"gem": vector(g)})
        for i, (o, g) in enumerate(zip(own, gem, strict=True))
    ]


def upsert(stub, name: str, batch: list[pb.Item]) -> pb.UpsertResponse:  # type: ignore[no-untyped-def]
    return stub.Upsert(iter([pb.UpsertRequest(collection=name, items=batch)]), timeout=120)


def ids(response: pb.SearchResponse) -> list[int]:
    return [hit.id for hit in response.hits]


def cosine_neighbours(data: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(data @ query), kind="stable")[:k])


def wait_idle(searcher: Searcher) -> None:
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)


def test_a_collection_lists_its_named_vector_with_an_index_and_upkeep_of_its_own(
    stub, searcher: Searcher
) -> None:
    name = create(stub)
    own, gem = data(400)
    assert upsert(stub, name, items(own, gem)).inserted_count == 400
    wait_idle(searcher)
    collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    (named,) = collection.vectors
    assert (named.name, named.dim, named.metric) == ("gem", GEM_DIM, pb.METRIC_COSINE)
    assert named.model_fingerprint == "g1" and collection.dim == OWN_DIM
    # Built after the load and measured by the upkeep, as the collection's own index is.
    assert named.index.built_rows == collection.index.built_rows == 400
    assert named.index.HasField("recall") and collection.index.HasField("recall")
    # The named vector's table is not a collection of its own to a caller.
    listed = [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]
    assert name in listed and not any("." in c for c in listed)
    gem_stats = stub.GetStats(pb.GetStatsRequest(collection=name, vector_name="gem"))
    assert gem_stats.row_count == 400 and gem_stats.index_present


def test_each_name_searches_its_own_vectors_by_vector_and_by_id(stub, searcher: Searcher) -> None:
    name = create(stub)
    own, gem = data(300, seed=1)
    upsert(stub, name, items(own, gem))
    wait_idle(searcher)
    for q in (5, 77, 210):
        by_own = stub.Search(pb.SearchRequest(collection=name, vector=vector(own[q]), top_k=5))
        assert ids(by_own) == list(exact_neighbours(own, own[q], 5))
        request = pb.SearchRequest(collection=name, vector=vector(gem[q]), top_k=5)
        request.vector_name = "gem"
        by_gem = stub.Search(request)
        assert ids(by_gem) == cosine_neighbours(gem, gem[q], 5)
        # Hits carry the item's label, and distances are the named vector's metric.
        assert by_gem.hits[0].label == f"l{q % 3}" and by_gem.hits[0].distance < 1e-5
        by_id = stub.Search(pb.SearchRequest(collection=name, id=q, top_k=5, vector_name="gem"))
        assert ids(by_id) == ids(by_gem)
    filtered = stub.Search(
        pb.SearchRequest(
            collection=name,
            vector=vector(gem[9]),
            top_k=7,
            vector_name="gem",
            filter=pb.Filter(labels=["l1"]),
        )
    )
    assert len(filtered.hits) == 7 and {h.label for h in filtered.hits} == {"l1"}


def test_get_returns_every_named_vector_as_it_was_written(stub) -> None:
    name = create(stub)
    own, gem = data(20, seed=2)
    upsert(stub, name, items(own, gem))
    got = stub.Get(pb.GetRequest(collection=name, ids=[3, 11], include_vectors=True)).items
    for item, i in zip(got, (3, 11), strict=True):
        assert np.allclose(item.vector.values, own[i], atol=1e-6)
        assert np.allclose(item.vectors["gem"].values, gem[i], atol=1e-6)
    plain = stub.Get(pb.GetRequest(collection=name, ids=[3])).items[0]
    assert not plain.vectors and not plain.vector.values
    page = stub.ListItems(pb.ListItemsRequest(collection=name, page_size=5, include_vectors=True))
    assert [set(item.vectors) for item in page.items] == [{"gem"}] * 5


@pytest.mark.parametrize(
    ("vectors_of", "words"),
    [
        (lambda g: {}, "has no vector 'gem'"),
        (lambda g: {"gem": vector(g), "sift": vector(g)}, "has vector 'sift'"),
        (lambda g: {"gem": vector(np.ones(GEM_DIM + 1, np.float32))}, "vector 'gem' of collection"),
        (
            lambda g: {"gem": vector(np.full(GEM_DIM, np.nan, np.float32))},
            "item 2 (id 2), vector 'gem': vector contains NaN",
        ),
    ],
)
def test_an_item_without_exactly_the_named_vectors_rejects_its_message_whole(
    stub, vectors_of, words: str
) -> None:
    name = create(stub)
    own, gem = data(3, seed=3)
    good = items(own[:2], gem[:2])
    bad = pb.Item(id=2, vector=vector(own[2]), vectors=vectors_of(gem[2]))
    error = rpc_error(upsert, stub, name, [*good, bad])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.details()
    # Nothing of the message was written, in either table.
    assert not stub.Get(pb.GetRequest(collection=name, ids=[0, 1])).items
    for vector_name in ("", "gem"):
        stats = stub.GetStats(pb.GetStatsRequest(collection=name, vector_name=vector_name))
        assert stats.row_count == 0


def test_a_collection_of_one_vector_refuses_named_ones_and_unknown_names(stub) -> None:
    name = f"single{next(_names)}_{np.random.default_rng().integers(1 << 30)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=GEM_DIM))
    item = pb.Item(id=1, vector=vector(np.ones(GEM_DIM)), vectors={"gem": vector(np.ones(4))})
    assert "has vector 'gem'" in rpc_error(upsert, stub, name, [item]).details()
    upsert(stub, name, [pb.Item(id=1, vector=vector(np.ones(GEM_DIM)))])
    query = pb.SearchRequest(collection=name, vector=vector(np.ones(GEM_DIM)), top_k=1)
    assert ids(stub.Search(query)) == [1]
    query.vector_name = "gem"
    error = rpc_error(stub.Search, query)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no vector named 'gem'" in error.details() and "none" in error.details()
    query.vector_name = "Gem; DROP TABLE x"
    error = rpc_error(stub.Search, query)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid vector name 'Gem; DROP TABLE x'" in error.details()


@pytest.mark.parametrize(
    ("vectors", "words"),
    [
        ([pb.NamedVector(name="Gem", dim=4)], "invalid vector name 'Gem'"),
        ([pb.NamedVector(name="gem", dim=4)] * 2, "appears twice"),
        ([pb.NamedVector(name="gem", dim=0)], "dim must be between"),
    ],
)
def test_named_vectors_that_cannot_be_made_fail_creation_and_leave_nothing(
    stub, vectors, words: str
) -> None:
    name = f"bad{next(_names)}_{np.random.default_rng().integers(1 << 30)}"
    request = pb.CreateCollectionRequest(name=name, dim=8, vectors=vectors)
    error = rpc_error(stub.CreateCollection, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()
    missing = rpc_error(stub.GetCollection, pb.GetCollectionRequest(name=name))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_updates_and_deletes_reach_every_vector_at_once(stub, searcher: Searcher) -> None:
    name = create(stub)
    own, gem = data(200, seed=4)
    upsert(stub, name, items(own, gem))
    wait_idle(searcher)
    # Item 7's gem vector moves onto item 150's (and its label from l1 to l0): a fresh row,
    # found from the moment it is stored.
    moved = items(own[7:8], gem[150:151], first_id=7)
    assert upsert(stub, name, moved).updated_count == 1
    near = pb.SearchRequest(collection=name, vector=vector(gem[150]), top_k=2, vector_name="gem")
    assert set(ids(stub.Search(near))) == {7, 150}
    assert stub.Delete(pb.DeleteRequest(collection=name, ids=[150])).deleted_count == 1
    assert ids(stub.Search(near))[0] == 7
    deleted = stub.Delete(pb.DeleteRequest(collection=name, filter=pb.Filter(labels=["l1"])))
    assert deleted.deleted_count == len([i for i in range(200) if i % 3 == 1 and i != 7])
    for vector_name in ("", "gem"):
        stats = stub.GetStats(pb.GetStatsRequest(collection=name, vector_name=vector_name))
        assert stats.row_count == 200 - 1 - deleted.deleted_count
    wide = pb.SearchRequest(collection=name, vector=vector(gem[0]), top_k=200, vector_name="gem")
    assert not [hit for hit in stub.Search(wide).hits if hit.label == "l1"]


def test_duplicates_are_found_by_the_vector_the_request_names(stub, searcher: Searcher) -> None:
    name = create(stub)
    own, gem = data(120, seed=5)
    # Items 100-109 are copies of 0-9 in gem space only: their own vectors are unrelated.
    gem[100:110] = gem[0:10] + 1e-4
    gem /= np.linalg.norm(gem, axis=1, keepdims=True)
    upsert(stub, name, items(own, gem))
    wait_idle(searcher)

    def groups(vector_name: str) -> set[frozenset[int]]:
        request = pb.FindDuplicatesRequest(
            collection=name, max_distance=1e-4, vector_name=vector_name
        )
        events = stub.FindDuplicates(request, timeout=120)
        return {frozenset(m.id for m in e.group.members) for e in events if e.HasField("group")}

    assert groups("gem") == {frozenset({i, 100 + i}) for i in range(10)}
    assert groups("") == set()


def test_dropping_a_collection_drops_its_named_vectors_tables(stub, searcher: Searcher) -> None:
    name = create(stub)
    own, gem = data(50, seed=6)
    upsert(stub, name, items(own, gem))
    wait_idle(searcher)
    stub.DropCollection(pb.DropCollectionRequest(name=name))
    table = named_vector_table(name, "gem")
    assert searcher.store is not None
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'{DATA_SCHEMA}."{table}"',))
        assert cur.fetchone()[0] is None
        cur.execute(
            f"SELECT count(*) FROM {CATALOG_SCHEMA}.collections WHERE name = %s OR parent = %s",
            (table, name),
        )
        assert cur.fetchone()[0] == 0
    # The name is free again, for a collection of one vector.
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=4))
    assert not stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.vectors


def test_a_named_vectors_table_cannot_be_written_as_a_collection(stub) -> None:
    name = create(stub)
    table = named_vector_table(name, "gem")
    item = pb.Item(id=1, vector=vector(np.ones(GEM_DIM)))
    error = rpc_error(upsert, stub, table, [item])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid collection name" in error.details()
    delete = pb.DeleteRequest(collection=table, ids=[1])
    assert rpc_error(stub.Delete, delete).code() == grpc.StatusCode.INVALID_ARGUMENT
