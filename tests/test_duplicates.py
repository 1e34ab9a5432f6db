"""FindDuplicates: planted near-duplicate pairs, triples and a large family come back as exactly
those groups, with every index kind and exactly, largest first; a chain of near items is split,
never one group; filters restrict them; a cancelled search stops. A real searcher on each engine,
over gRPC."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from imgsearch.records import DuplicateGroup
from imgsearch.v1 import searcher_pb2 as pb
from searcher.duplicates import DuplicateFinder
from searcher.queries import Effort
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_stub,
    upsert_messages,
)

DISTINCT = 2000
PAIRS, TRIPLES = 40, 20
FAMILY = 45  # more copies of one picture than the index is asked for per item (32)
NOISE = 0.05  # a copy's per-dimension jitter: copies lie ~1.6 apart, distinct items ≥ 10
MAX_DISTANCE = 5.0
KINDS = {
    "VECTOR": pb.INDEX_KIND_VECTOR,
    "HALFVEC": pb.INDEX_KIND_HALFVEC,
    "BINARY": pb.INDEX_KIND_BINARY,
}
_names = itertools.count()


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    from tests.searcher_helpers import searcher_on

    with searcher_on(request.param, request, tmp_path_factory, exact_filter_rows=500) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


def planted() -> tuple[np.ndarray, list[str], list[set[int]]]:
    """Distinct vectors, then copies of some of them: the vectors, a label per row (copies
    share their original's), and the planted groups as sets of row ids."""
    rng = np.random.default_rng(7)
    data = [clustered_vectors(DISTINCT, seed=11)]
    labels = [f"label{i % 10}" for i in range(DISTINCT)]
    groups: list[set[int]] = []
    originals = rng.choice(DISTINCT, size=PAIRS + TRIPLES + 1, replace=False)
    sizes = [2] * PAIRS + [3] * TRIPLES + [FAMILY]
    next_id = DISTINCT
    for original, size in zip(originals, sizes, strict=True):
        copies = data[0][original] + rng.normal(scale=NOISE, size=(size - 1, 1000))
        data.append(copies.astype(np.float32))
        labels += [labels[original]] * (size - 1)
        groups.append({int(original), *range(next_id, next_id + size - 1)})
        next_id += size - 1
    return np.concatenate(data), labels, groups


@pytest.fixture(scope="module")
def collections(searcher: Searcher) -> dict[str, tuple[str, list[set[int]], list[str]]]:
    """One filled collection per index kind the engine has."""
    data, labels, groups = planted()
    channel, stub = searcher_stub(searcher.port)
    made = {}
    with channel:
        assert searcher.store is not None
        for name, kind in KINDS.items():
            if kind != pb.INDEX_KIND_VECTOR and searcher.store.pgvector < (0, 7, 0):
                continue
            collection = f"dups_{name.lower()}_{next(_names)}"
            stub.CreateCollection(
                pb.CreateCollectionRequest(
                    name=collection, dim=1000, index_params=pb.IndexParams(kind=kind)
                )
            )
            stub.Upsert(upsert_messages(collection, data, labels=labels))
            made[name] = (collection, groups, labels)
    return made


Found = tuple[list[pb.DuplicatesProgress], list[set[int]]]


def find(stub, collection: str, **request: object) -> Found:  # type: ignore[no-untyped-def]
    """The progress events and the groups (as sets of ids) of one FindDuplicates call."""
    progress, groups = [], []
    for event in stub.FindDuplicates(pb.FindDuplicatesRequest(collection=collection, **request)):
        if event.WhichOneof("event") == "progress":
            progress.append(event.progress)
        else:
            groups.append(event.group)
    for group in groups:
        first, *rest = group.members
        assert first.distance == 0 and all(m.id > first.id for m in rest)
        assert [m.distance for m in rest] == sorted(m.distance for m in rest)
    return progress, [{m.id for m in group.members} for group in groups]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("exact", [False, True], ids=["index", "exact"])
def test_planted_pairs_triples_and_a_large_family_come_back_as_exactly_those_groups(
    stub, collections, kind: str, exact: bool
) -> None:
    if kind not in collections:
        pytest.skip(f"this engine has no {kind} kind")
    collection, planted_groups, _ = collections[kind]
    progress, groups = find(stub, collection, max_distance=MAX_DISTANCE, exact=exact)
    assert sorted(groups, key=min) == sorted(planted_groups, key=min)
    rows = DISTINCT + sum(len(g) - 1 for g in planted_groups)
    assert progress[-1].scanned_items == progress[-1].total_items == rows
    assert [p.scanned_items for p in progress] == sorted(p.scanned_items for p in progress)


@pytest.mark.parametrize("exact", [False, True], ids=["index", "exact"])
def test_a_chain_of_near_items_is_split_never_joined_past_the_distance(stub, exact: bool) -> None:
    # a–b and b–c lie within the distance, a–c beyond it: b groups with one of them, never both.
    rng = np.random.default_rng(3)
    base, step = rng.normal(size=(2, 1000))
    base *= 1000 / np.linalg.norm(base)  # far from every other vector
    step *= 0.6 * MAX_DISTANCE / np.linalg.norm(step)
    chain = np.stack([base, base + step, base + 2 * step]).astype(np.float32)
    data = np.concatenate([clustered_vectors(300, seed=12), chain])
    a, b, c = 300, 301, 302
    collection = f"dups_chain_{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=collection, dim=1000))
    stub.Upsert(upsert_messages(collection, data))
    _, groups = find(stub, collection, max_distance=MAX_DISTANCE, exact=exact)
    assert len(groups) == 1 and b in groups[0] and len(groups[0]) == 2, groups
    assert {a, c} - groups[0], "a and c are farther apart than the distance"


def test_items_the_index_walk_does_not_reach_are_compared_exactly(
    searcher: Searcher, collections, caplog: pytest.LogCaptureFixture
) -> None:
    # A walk of two candidates leaves much of the graph out of reach; the groups stay whole.
    name, planted_groups, _ = collections["VECTOR"]
    store = searcher.store
    assert store is not None
    finder = DuplicateFinder(store.pool, store.queries, neighbours=2)
    collection, has_index = store.catalogue.get(name, fresh=True)
    with caplog.at_level(logging.INFO, logger="searcher.duplicates"):
        events = list(finder.find(collection, has_index, MAX_DISTANCE, effort=Effort(2, 0)))
    groups = [{m.id for m in e.members} for e in events if isinstance(e, DuplicateGroup)]
    assert sorted(groups, key=min) == sorted(planted_groups, key=min)
    assert "the index did not reach" in caplog.text


def test_groups_come_largest_first(stub, collections) -> None:
    collection, _, _ = collections["VECTOR"]
    _, groups = find(stub, collection, max_distance=MAX_DISTANCE)
    sizes = [len(group) for group in groups]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == FAMILY
    _, first = find(stub, collection, max_distance=MAX_DISTANCE, limit=1)
    assert first == groups[:1]


def test_member_distances_are_exact_distances_to_the_first(stub, collections) -> None:
    collection, _, _ = collections["VECTOR"]
    groups = []
    for event in stub.FindDuplicates(
        pb.FindDuplicatesRequest(collection=collection, max_distance=MAX_DISTANCE, limit=3)
    ):
        if event.WhichOneof("event") == "group":
            groups.append(event.group)
    assert len(groups) == 3  # the limit
    for group in groups:
        ids = [m.id for m in group.members]
        items = {i.id: i for i in stub.Get(pb.GetRequest(
            collection=collection, ids=ids, include_vectors=True)).items}  # fmt: skip
        first = np.asarray(items[ids[0]].vector.values, dtype=np.float64)
        for member in group.members:
            vector = np.asarray(items[member.id].vector.values, dtype=np.float64)
            assert member.distance == pytest.approx(np.linalg.norm(vector - first), abs=1e-4)


def test_a_label_filter_keeps_only_groups_of_those_labels(stub, collections) -> None:
    collection, planted_groups, labels = collections["VECTOR"]
    wanted = {"label3", "label4"}
    _, groups = find(stub, collection, max_distance=MAX_DISTANCE, filter=pb.Filter(labels=wanted))
    expected = [g for g in planted_groups if labels[min(g)] in wanted]
    assert expected and sorted(groups, key=min) == sorted(expected, key=min)


def test_a_distance_below_every_copy_finds_no_groups(stub, collections) -> None:
    collection, _, _ = collections["VECTOR"]
    _, groups = find(stub, collection, max_distance=0.01)
    assert groups == []


@pytest.mark.parametrize("max_distance", [0.0, float("nan"), float("inf")])
def test_a_missing_or_meaningless_distance_is_refused(stub, collections, max_distance) -> None:
    collection, _, _ = collections["VECTOR"]
    with pytest.raises(grpc.RpcError) as error:
        find(stub, collection, max_distance=max_distance)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_distance" in error.value.details()


def test_an_unknown_collection_is_not_found(stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        find(stub, "no_such_collection", max_distance=1.0)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_cancelled_search_stops_in_the_searcher(stub, collections) -> None:
    collection, _, _ = collections["VECTOR"]
    stopped = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "cancelled after" in record.getMessage():
                stopped.set()

    watch, logger = Watch(), logging.getLogger("searcher.duplicates")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    try:
        call = stub.FindDuplicates(
            pb.FindDuplicatesRequest(collection=collection, max_distance=MAX_DISTANCE, exact=True)
        )
        first = next(call)
        assert first.WhichOneof("event") == "progress"
        call.cancel()
        with pytest.raises(grpc.RpcError) as error:
            list(call)
        assert error.value.code() == grpc.StatusCode.CANCELLED
        assert stopped.wait(timeout=60), "the searcher went on scanning after the cancel"
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
    # The searcher still answers.
    assert stub.GetStats(pb.GetStatsRequest(collection=collection)).row_count > DISTINCT
