"""Index upkeep, seen through the API: every build's recall is measured and reported, a poor
build is rebuilt and then searched harder, live searches are shadowed by exact ones, and a BINARY
quantizer is refitted once its collection has doubled."""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest
from psycopg2 import sql

from imgsearch.v1 import searcher_pb2 as pb
from searcher import effort, recall
from searcher.catalogue import Collection
from searcher.kinds import EFFORT_LADDER
from searcher.maintenance import REBUILDING, REBUILT
from searcher.pgvector_io import Item
from searcher.pool import ConnectionPool
from searcher.recall import HELD_OUT_OF_FOLDS, draw_sample
from searcher.schema import NO_CELL
from searcher.server import Searcher
from searcher.store import VectorStore
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_on,
    searcher_stub,
    upsert_messages,
    vector,
)
from tests.test_metrics import scrape

_names = itertools.count()
UPKEEP_S = 300  # a deadline for background builds and checks, not an expected duration


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    # Every search shadowed, with no rest between exact re-runs.
    settings = {"metrics_address": "127.0.0.1:0", "shadow_share": 1.0, "shadow_budget": 1.0}
    with searcher_on(request.param, request, tmp_path_factory, **settings) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


def quantized(searcher: Searcher) -> bool:
    assert searcher.store is not None
    return searcher.store.pgvector >= (0, 7, 0)


def settle(searcher: Searcher) -> None:
    assert searcher.store is not None
    assert searcher.store.maintenance.wait_idle(UPKEEP_S), "index upkeep did not finish"


def create(stub, kind: int = 0, **params: int) -> str:  # type: ignore[no-untyped-def]
    name = f"u{next(_names)}"
    stub.CreateCollection(
        pb.CreateCollectionRequest(
            name=name, dim=1000, index_params=pb.IndexParams(kind=kind, **params)
        )
    )
    return name


def indexed(  # type: ignore[no-untyped-def]
    stub, searcher: Searcher, data: np.ndarray
) -> tuple[str, VectorStore, Collection]:
    """A new collection holding `data` (ids from 0), once its upkeep is done: its name, the
    searcher's store, and the collection as catalogued."""
    name = create(stub)
    stub.Upsert(upsert_messages(name, data))
    settle(searcher)
    assert searcher.store is not None
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    return name, searcher.store, collection


@dataclass(frozen=True)
class Loaded:
    """A collection of 20k clustered rows as its first build and check left it."""

    name: str
    data: np.ndarray
    first: pb.Collection  # GetCollection once the upkeep was done, before any test changed it


@pytest.fixture(scope="module")
def loaded_20k(searcher: Searcher) -> Loaded:
    # Built once per engine (a build and its check of 20k rows: 35-60 s), shared by the tests
    # that read it; one of them builds it again, so what the first build left is kept here.
    channel, stub = searcher_stub(searcher.port)
    with channel:
        data = clustered_vectors(20_000, seed=4)
        name, _, _ = indexed(stub, searcher, data)
        first = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    return Loaded(name, data, first)


def test_a_build_is_measured_and_its_recall_reported(stub, loaded_20k: Loaded) -> None:
    collection = loaded_20k.first
    index = collection.index
    assert index.HasField("recall") and index.recall >= 0.95
    assert index.recall_sample == 20_000 // 50 and index.HasField("recall_time")  # one per 50 rows
    assert (index.generation, index.built_rows) == (2, 20_000)  # 1: the empty collection's
    assert index.HasField("build_time") and index.build_seconds > 0
    assert "search effort calibrated: ef_search " in index.note
    assert f"for recall@10 {index.recall:.3f} on 400 rows held out of the build" in index.note
    assert index.ef_search in EFFORT_LADDER
    stats = stub.GetStats(pb.GetStatsRequest(collection=loaded_20k.name))
    now = stub.GetCollection(pb.GetCollectionRequest(name=loaded_20k.name)).collection
    assert stats.index == now.index and stats.index_params.kind == collection.index_params.kind
    assert stats.postgres_version.split(".")[0] in ("16", "18")
    assert stats.pgvector_version in ("0.6.2", "0.8.5")
    assert set(stats.settings) >= {"shared_buffers", "maintenance_work_mem", "effective_cache_size"}


def test_a_build_keeps_rows_out_of_its_graph_for_its_check_then_folds_them_in(
    stub, searcher: Searcher, loaded_20k: Loaded
) -> None:
    # Stored vectors, moved or not, find their neighbours through their own edges: the rows a
    # build measures on are rows its graph does not hold, found by every search meanwhile.
    name, data, store = loaded_20k.name, loaded_20k.data, searcher.store
    assert store is not None
    collection, _ = store.catalogue.get(name, fresh=True)
    assert store.builder.fresh_rows(collection) == 0
    rebuilt = store.builder.build(collection, concurrently=True)  # the upkeep is not told yet
    with store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT id, cell FROM {} WHERE {}").format(rebuilt.table, rebuilt.fresh)
        )
        held, cells = zip(*cur.fetchall(), strict=True)
    # In their cells (the build's, for its fresh rows): a search scans only its nearest cells'.
    assert rebuilt.cells_segment and min(cells) >= 0
    assert len(held) == 20_000 // 50 and len(set(held)) == len(held)
    for row in held[:20]:  # no graph holds them, and every search finds them
        hits = stub.Search(pb.SearchRequest(collection=name, vector=vector(data[row]), top_k=1))
        assert (hits.hits[0].id, hits.hits[0].distance) == (row, pytest.approx(0.0, abs=1e-3))
    maintenance = store.maintenance
    maintenance.stop()  # the check stays queued while a fold comes first
    try:
        maintenance.after_build(rebuilt)
        maintenance.fold(name)
        assert store.builder.fresh_rows(rebuilt) == len(held)  # left for the check
    finally:
        maintenance.start()
    settle(searcher)
    index = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert index.generation == rebuilt.generation and index.recall_sample == len(held)
    assert f"for recall@10 {index.recall:.3f} on {len(held)} rows held out of the build" in (
        index.note
    )
    assert store.builder.fresh_rows(rebuilt) == 0  # folded in once measured


def test_a_recheck_after_folds_measures_on_added_rows_the_folds_kept_out_of_the_graph(
    stub, searcher: Searcher
) -> None:
    # Rows folded into a graph are stored vectors to it: measured on them, a recheck would
    # overstate recall as moved vectors do. The folds leave a random share of the added rows
    # fresh for it, then fold those too.
    data = clustered_vectors(10_000 + 500, seed=6)
    name, store, collection = indexed(stub, searcher, data[:10_000])
    added = data[10_000:]  # RECHECK_SHARE of 10k
    maintenance = store.maintenance
    maintenance.stop()  # the folds run here, one at a time
    try:
        stub.Upsert(upsert_messages(name, added, first_id=10_000, per_message=100))
        maintenance.fold(name)
        with store.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id FROM {} WHERE {}").format(collection.table, collection.fresh)
            )
            kept = sorted(row[0] for row in cur.fetchall())
        # sample_size(10k) = 200 of the 500 added, by a hash of the id: about 40% of them.
        assert 150 < len(kept) < 260 and min(kept) >= 10_000
        for row in kept[:10]:  # still found, as every fresh row is
            hits = stub.Search(pb.SearchRequest(collection=name, vector=vector(data[row]), top_k=1))
            assert hits.hits[0].id == row
        maintenance.fold(name)  # another fold keeps them too
        assert store.builder.fresh_rows(collection) == len(kept)
    finally:
        maintenance.start()  # the recheck the fold queued, then the fold of every row
    settle(searcher)
    index = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert index.generation == collection.generation  # folded, not rebuilt
    measured = min(len(kept), 10_500 // 50)
    assert index.recall_sample == measured
    assert f"on {measured} rows added since, held out of the folds" in index.note
    assert store.builder.fresh_rows(collection) == 0


def test_a_recheck_that_finds_the_graph_short_at_every_effort_has_it_built_again_at_the_same_m(
    stub, searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds insert rows one by one into a graph that was good; where they leave it short of
    the target whatever the effort, the recheck has it built again from its rows, at the same
    m (a repair would raise it), and says so while the build runs and after."""
    data = clustered_vectors(10_000 + 500, seed=13)
    name, store, collection = indexed(stub, searcher, data[:10_000])
    maintenance = store.maintenance
    target = maintenance.recall_target
    build_again = maintenance.rebuild
    said_meanwhile: list[str] = []

    def rebuild(name: str) -> None:
        said_meanwhile.append(
            stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index.note
        )
        maintenance.recall_target = target  # a graph built afresh meets it
        build_again(name)

    monkeypatch.setattr(maintenance, "rebuild", rebuild)
    maintenance.stop()
    try:
        stub.Upsert(upsert_messages(name, data[10_000:], first_id=10_000, per_message=100))
        maintenance.recall_target = 1.01  # out of reach, as for a graph the folds left short
        maintenance.check(name, repair=False, held_out=HELD_OUT_OF_FOLDS)
    finally:
        maintenance.recall_target = target
        maintenance.start()
    settle(searcher)
    (meanwhile,) = said_meanwhile
    assert REBUILDING in meanwhile and "not reached at the most effort" in meanwhile
    rebuilt = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert rebuilt.index.generation == collection.generation + 1
    assert rebuilt.index_params.m == collection.m and rebuilt.index.built_rows == 10_500
    assert REBUILT in rebuilt.index.note and REBUILDING not in rebuilt.index.note
    assert "not reached" not in rebuilt.index.note
    # Not a repair (the note of one that the first build needed stays: HNSW builds vary).
    repaired = "rebuilt with m="
    assert (repaired in rebuilt.index.note) == (repaired in collection.index_note)


def test_the_rows_kept_out_of_folds_are_a_share_of_the_rows_however_their_ids_run(
    searcher: Searcher,
) -> None:
    # By a hash of the id: ids in steps of 1024 (a rule on id % 1024 would keep all or none)
    # are kept at the share asked for, 200 of every 500 added rows to 10k indexed ones.
    kept = recall.kept_buckets(10_000, 500, 2_000)
    assert kept == math.ceil(0.4 * recall.KEPT_BUCKETS)
    assert searcher.store is not None
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM generate_series(0::bigint, 4095 * 1024, 1024) AS id WHERE {}"
            ).format(recall.not_kept(sql.SQL("true"), kept))
        )
        folded = cur.fetchone()[0]
    assert 0.56 < folded / 4096 < 0.64
    assert recall.kept_buckets(9_999, 500, 2_000) == 0  # too small to hold rows out: none kept


def test_a_row_rewritten_while_rows_are_held_out_stays_as_its_writer_left_it(
    stub, searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that had not seen the build rewrites a sampled row after the build read it and
    before it moved the sample: that row keeps its writer's segment and cell, not the cell of
    its old vector."""
    data = clustered_vectors(10_000, seed=5)
    _, store, collection = indexed(stub, searcher, data)
    old_view = replace(collection, growing_segment=collection.index_segment, cells_segment=0)
    decode = recall.decode_binary_copy_versioned_vectors
    rewritten: list[int] = []

    def rewritten_after_reading(payload: bytes, dim: int):  # type: ignore[no-untyped-def]
        ids, versions, vectors = decode(payload, dim)
        rewritten.append(int(ids[0]))
        store.loader.write(old_view, [Item(rewritten[0], data[rewritten[0]] + 0.5)])
        return ids, versions, vectors

    monkeypatch.setattr(recall, "decode_binary_copy_versioned_vectors", rewritten_after_reading)
    into = collection.growing_segment
    with store.pool.connection() as conn, conn, conn.cursor() as cur:
        held = recall.hold_out(cur, collection, 10_000, 200, into=into, cells=None)
        cur.execute(sql.SQL("SELECT id, segment, cell FROM {}").format(collection.table))
        placed = {row[0]: row[1:] for row in cur.fetchall()}
    assert held == 199
    assert sum(1 for segment, cell in placed.values() if segment == into) == 199
    assert placed[rewritten[0]] == (collection.index_segment, NO_CELL)


def test_a_small_collection_is_measured_on_stored_vectors_moved_off_their_rows(
    stub, searcher: Searcher
) -> None:
    name = create(stub)
    stub.Upsert(upsert_messages(name, clustered_vectors(5_000, seed=4)))
    settle(searcher)
    index = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert index.recall_sample == 200
    moved = "200 stored vectors moved halfway to their nearest neighbour"
    assert f"for recall@10 {index.recall:.3f} on {moved} (target 0.99)" in index.note


@pytest.mark.parametrize("engine", ENGINES)
def test_with_the_recall_check_turned_off_a_build_is_searched_at_the_defaults_and_nothing_fails(
    engine: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Graphs by cell too: their check read its (empty) sample's cells and failed, every build.
    settings = {"recall_sample": 0, "graph_cells_from": 1500}
    data = clustered_vectors(3000, dim=64, clusters=20, seed=1)
    with (
        caplog.at_level(logging.WARNING, logger="searcher"),
        searcher_on(engine, request, tmp_path_factory, **settings) as running,
    ):
        channel, stub = searcher_stub(running.port)
        with channel:
            name = f"unmeasured{next(_names)}"
            stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=64))
            stub.Upsert(upsert_messages(name, data))
            assert running.store is not None and running.store.maintenance.wait_idle(UPKEEP_S)
            index = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
            collection, has_index = running.store.catalogue.get(name, fresh=True)
            assert has_index and collection.graph_cells == 2 and index.generation == 2
            assert not index.HasField("recall") and index.recall_sample == 0
            assert index.ef_search == 0  # the server's default effort, never calibrated
            for row in (0, 1234, 2999):
                request_ = pb.SearchRequest(collection=name, vector=vector(data[row]), top_k=1)
                assert [hit.id for hit in stub.Search(request_).hits] == [row]
    assert [record.getMessage() for record in caplog.records] == []


def test_the_recall_check_reads_every_vector_without_the_request_time_limit(
    searcher: Searcher, loaded_20k: Loaded
) -> None:
    # A million rows took longer than the 30 s request limit to read; 20k rows take longer
    # than a 50 ms one, which a count or a search here never does.
    assert searcher.store is not None
    collection, _ = searcher.store.catalogue.get(loaded_20k.name)
    hurried = ConnectionPool(searcher.store.pool.dsn, max_size=1, statement_timeout_ms=50)
    try:
        sample = draw_sample(
            hurried, collection, 200, searcher.store._approximate_search(collection)
        )
    finally:
        hurried.close()
    assert sample is not None and len(sample) == 200
    assert sample.true_distances.shape == (200, 10) and np.isfinite(sample.true_distances).all()


def test_a_poor_build_is_rebuilt_with_the_default_parameters(stub, searcher: Searcher) -> None:
    # m=2, ef_construction=4: a graph so sparse that searches miss most neighbours.
    name = create(stub, kind=pb.INDEX_KIND_VECTOR, m=2, ef_construction=4)
    stub.Upsert(upsert_messages(name, clustered_vectors(20_000, seed=4)))
    settle(searcher)
    collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert (collection.index_params.m, collection.index_params.ef_construction) == (16, 200)
    assert collection.index.generation == 3
    assert "rebuilt with m=16, ef_construction=200: recall@10 was" in collection.index.note
    assert "at m=2, ef_construction=4 (floor 0.95, target 0.99)" in collection.index.note
    assert collection.index.recall >= 0.95


def test_a_first_graph_walked_at_a_costly_effort_is_built_once_more_larger(
    stub, searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph of the default m that meets the target only at a high ef_search is rebuilt with
    m and ef_construction raised, then calibrated; the larger graph is not rebuilt again,
    whatever effort it needs."""
    monkeypatch.setattr(effort, "COSTLY_EF_SEARCH", EFFORT_LADDER[0])  # every effort is costly
    name, _, _ = indexed(stub, searcher, clustered_vectors(10_000, seed=17))
    collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert (collection.index_params.m, collection.index_params.ef_construction) == (32, 400)
    assert collection.index.generation == 3
    assert re.search(
        r"rebuilt with m=32, ef_construction=400: recall@10 [01]\.\d+ took ef_search \d+ at m=16, "
        r"ef_construction=200 \(floor 0\.95, target 0\.99\)",
        collection.index.note,
    )
    assert collection.index.recall >= 0.99


def test_codes_that_cannot_tell_neighbours_apart_get_the_most_candidates(
    stub, searcher: Searcher
) -> None:
    """Points on one line through the origin: every dimension crosses its three thresholds at
    the same places, so the BINARY codes split 10k rows into 4 groups and Hamming distance
    cannot rank inside them. The rebuild cannot help; re-ranking more candidates is all there
    is: the calibration ends at the most, and says so, though recall stays low."""
    if not quantized(searcher):
        pytest.skip("pgvector 0.6 has no BINARY kind")
    rng = np.random.default_rng(9)
    line = rng.uniform(0, 1000, size=(10_000, 1)) * np.ones((1, 1000)) / np.sqrt(1000)
    data = (line + rng.normal(scale=1e-3, size=line.shape)).astype(np.float32)
    name = create(stub, kind=pb.INDEX_KIND_BINARY)
    stub.Upsert(upsert_messages(name, data))
    settle(searcher)
    index = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert (index.ef_search, index.candidates) == (1000, 1000)
    assert "rebuilt with m=32, ef_construction=400: recall@10 was " in index.note
    assert "search effort calibrated: ef_search 1000, candidates 1000 for recall@10" in index.note
    assert index.recall < 0.95
    # The collection grows by a third: a build takes the new rows in, and is calibrated, but not
    # repaired again (m would double with every growth, for codes no graph serves).
    more = (rng.uniform(0, 1000, size=(3_500, 1)) * np.ones((1, 1000)) / np.sqrt(1000)).astype(
        np.float32
    )
    stub.Upsert(upsert_messages(name, more, first_id=10_000))
    settle(searcher)
    grown = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert grown.index_params.m == 32 and grown.index.generation == index.generation + 1
    assert grown.index.built_rows == 13_500
    assert "3500 fresh rows taken in by a build" in grown.index.note
    assert "rebuilt with" not in grown.index.note and "not reached" in grown.index.note


def test_shadow_queries_measure_live_recall_and_move_the_gauge(stub, searcher: Searcher) -> None:
    assert searcher.store is not None
    name = create(stub)
    stub.Upsert(upsert_messages(name, clustered_vectors(5000, seed=11)))
    settle(searcher)
    for query in clustered_vectors(30, seed=12):
        stub.Search(pb.SearchRequest(collection=name, vector=vector(query), top_k=10))
        # One at a time: a search arriving while the monitor is busy is not shadowed.
        assert searcher.store.shadow.wait_idle(60)
    stub.Search(pb.SearchRequest(collection=name, id=3, top_k=10, params={"exact": True}))
    assert searcher.store.shadow.wait_idle(60)
    metrics = scrape(searcher.metrics_port)
    labels = (("collection", name),)
    assert metrics[("imgsearch_searcher_shadow_queries_total", labels)] == 30  # exact: none
    assert 0.95 <= metrics[("imgsearch_searcher_recall", labels)] <= 1.0
    stats = stub.GetStats(pb.GetStatsRequest(collection=name))
    assert stats.HasField("live_recall")
    assert stats.live_recall == metrics[("imgsearch_searcher_recall", labels)]


def test_a_binary_quantizer_is_refitted_when_its_collection_doubles(
    stub, searcher: Searcher
) -> None:
    if not quantized(searcher):
        pytest.skip("pgvector 0.6 has no BINARY kind")
    data = clustered_vectors(4000, seed=13)
    name = create(stub, kind=pb.INDEX_KIND_BINARY)
    stub.Upsert(upsert_messages(name, data[:1000]))
    settle(searcher)
    first = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert (first.quantizer_rows, first.generation) == (1000, 2)
    stub.Upsert(upsert_messages(name, data[1000:1900], first_id=1000))  # 1.9×: kept
    settle(searcher)
    kept = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert (kept.quantizer_rows, kept.generation) == (1000, 2)
    stub.Upsert(upsert_messages(name, data[1900:2100], first_id=1900))  # 2.1×: refitted
    settle(searcher)
    refitted = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert (refitted.quantizer_rows, refitted.generation) == (2100, 3)
    assert refitted.note.startswith("quantizer refitted on 2100 rows (it was fitted on 1000); ")
    assert refitted.recall >= 0.95
    hits = stub.Search(pb.SearchRequest(collection=name, vector=vector(data[2050]), top_k=1)).hits
    assert hits[0].id == 2050 and hits[0].distance == pytest.approx(0.0, abs=1e-4)
