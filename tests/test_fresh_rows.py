"""Rows added to an indexed collection: stored at COPY speed off the graph, searchable from the
moment their Upsert returns (an exact scan of the fresh rows merged with the index's), updated
and deleted at once, and folded into the index in the background, a batch per transaction, so
that a fold cut short by a killed searcher or a PostgreSQL restart loses and doubles nothing.

Every test runs on both engines, as tests/test_searcher_service.py's do.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psycopg2
import pytest

from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.maintenance import RECHECK_SHARE
from searcher.schema import DATA_SCHEMA
from searcher.server import Searcher
from tests.process_helpers import end_process, start_service
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_on,
    searcher_stub,
    start_again,
    upsert_messages,
    vector,
)

_names = itertools.count()
UPKEEP_S = 300  # a deadline for background builds and folds, not an expected duration
DIM = 64


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    # Filters matching over 50 rows walk the index, so small tests reach both parts.
    with searcher_on(request.param, request, tmp_path_factory, exact_filter_rows=50) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


@contextlib.contextmanager
def folds_paused(searcher: Searcher) -> Iterator[None]:
    """The searcher's background upkeep stopped: fresh rows stay fresh meanwhile."""
    assert searcher.store is not None
    maintenance = searcher.store.maintenance
    assert maintenance.wait_idle(UPKEEP_S)
    maintenance.stop()
    try:
        yield
    finally:
        maintenance.start()


def indexed_collection(stub, searcher: Searcher, rows: int = 2000, **labels: object) -> str:  # type: ignore[no-untyped-def]
    """A collection of `rows` vectors whose index is built and measured."""
    name = f"fresh{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM))
    data = clustered_vectors(rows, dim=DIM, seed=11)
    stub.Upsert(upsert_messages(name, data, labels=[f"old{i % 10}" for i in range(rows)]))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0
    return name


def nearest(stub, name: str, query: np.ndarray, top_k: int = 1, **options: object) -> list:  # type: ignore[no-untyped-def]
    request = pb.SearchRequest(collection=name, vector=vector(query), top_k=top_k, **options)
    return list(stub.Search(request).hits)


def test_added_rows_stay_off_the_graph_and_are_found_from_the_moment_they_are_stored(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    added = np.random.default_rng(5).normal(size=(300, DIM)).astype(np.float32)
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, first_id=10_000, per_message=16))
        assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 300
        for offset in (0, 150, 299):
            (hit,) = nearest(stub, name, added[offset])
            assert (hit.id, hit.distance) == (10_000 + offset, pytest.approx(0.0, abs=1e-4))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    stats = stub.GetStats(pb.GetStatsRequest(collection=name))
    assert (stats.fresh_rows, stats.row_count) == (0, 2300)  # folded in, nothing doubled
    for offset in (0, 150, 299):
        assert nearest(stub, name, added[offset])[0].id == 10_000 + offset


def test_the_index_is_measured_again_once_enough_rows_are_folded_into_it(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    before = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    added = clustered_vectors(200, dim=DIM, seed=12)
    few = int(RECHECK_SHARE * before.built_rows) - 1
    stub.Upsert(upsert_messages(name, added[:few], first_id=10_000))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    folded = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0
    assert folded.recall_time == before.recall_time  # too few to measure again
    stub.Upsert(upsert_messages(name, added[few:], first_id=10_000 + few))
    assert searcher.store.maintenance.wait_idle(UPKEEP_S)
    after = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert after.generation == before.generation  # folded, not rebuilt
    assert after.recall_time.ToDatetime() > before.recall_time.ToDatetime()


def test_updates_and_deletes_of_fresh_and_indexed_rows_take_effect_at_once(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    rng = np.random.default_rng(6)
    with folds_paused(searcher):
        fresh = rng.normal(size=(2, DIM)).astype(np.float32)
        stub.Upsert(upsert_messages(name, fresh, first_id=20_000))
        got = stub.Get(pb.GetRequest(collection=name, ids=[7], include_vectors=True))
        old_vector = np.asarray(got.items[0].vector.values, np.float32)
        moved = rng.normal(size=(1, DIM)).astype(np.float32) * 3
        stub.Upsert(upsert_messages(name, moved, first_id=7, labels=["moved"]))  # an indexed row
        stub.Upsert(upsert_messages(name, moved * 2, first_id=20_000))  # a fresh one
        assert nearest(stub, name, moved[0])[0].id == 7  # found under its new vector...
        assert 7 not in [h.id for h in nearest(stub, name, old_vector, top_k=5)]  # not the old
        assert nearest(stub, name, moved[0] * 2)[0].id == 20_000
        deleted = stub.Delete(pb.DeleteRequest(collection=name, ids=[20_001, 3]))
        assert deleted.deleted_count == 2
        for gone, query in ((20_001, fresh[1]), (3, None)):
            ids = [h.id for h in nearest(stub, name, query if query is not None else fresh[0], 50)]
            assert gone not in ids
        assert stub.GetStats(pb.GetStatsRequest(collection=name)).row_count == 2000
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    assert nearest(stub, name, moved[0])[0].id == 7
    got = stub.Get(pb.GetRequest(collection=name, ids=[3, 7, 20_000, 20_001]))
    assert [(i.id, i.label) for i in got.items] == [(7, "moved"), (20_000, "")]


def test_a_filter_keeps_min_of_top_k_and_matching_rows_across_fresh_and_indexed_ones(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    added = np.random.default_rng(7).normal(size=(40, DIM)).astype(np.float32)
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, first_id=30_000, labels=["old3"] * 40))
        # 200 indexed rows and 40 fresh ones have the label: over exact_filter_rows (50), so
        # the index is walked; every one of the 240 comes back, nearest first.
        hits = nearest(stub, name, added[0], top_k=240, filter=pb.Filter(labels=["old3"]))
        assert len(hits) == 240 and {h.label for h in hits} == {"old3"}
        assert {h.id for h in hits} >= set(range(30_000, 30_040))
        distances = [h.distance for h in hits]
        assert distances == sorted(distances) and hits[0].id == 30_000


def test_many_added_rows_are_taken_in_by_a_build_rather_than_folded_one_by_one(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    before = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    added = np.random.default_rng(9).normal(size=(1500, DIM)).astype(np.float32)
    stub.Upsert(upsert_messages(name, added, first_id=40_000))
    assert nearest(stub, name, added[1499])[0].id == 41_499  # found before and after
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    after = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert after.generation > before.generation and after.built_rows == 3500
    assert "1500 fresh rows taken in by a build" in after.note
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0
    assert nearest(stub, name, added[1499])[0].id == 41_499


def _sql(dsn: str, statement: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


def _stored(dsn: str, name: str) -> dict[int, np.ndarray]:
    rows = _sql(dsn, f'SELECT id, embedding::text FROM {DATA_SCHEMA}."{name}" ORDER BY id')
    return {int(i): np.array(v.strip("[]").split(","), np.float32) for i, v in rows}  # type: ignore[union-attr]


def _wait_until_folding(dsn: str, name: str, fresh_before: int) -> None:
    """Until a fold has moved some rows, and not all of them."""
    deadline = time.monotonic() + 120
    while True:
        (fresh,), *_ = _sql(
            dsn,
            f'SELECT count(*) FROM {DATA_SCHEMA}."{name}" WHERE segment > '
            f"(SELECT index_segment FROM imgsearch.collections WHERE name = '{name}')",
        )
        if 0 < fresh < fresh_before:  # type: ignore[operator]
            return
        assert time.monotonic() < deadline and fresh, f"no fold under way ({fresh} fresh)"
        time.sleep(0.02)


@pytest.fixture()
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path / "pg") as server:
        yield server


INDEXED, ADDED = 6000, 1200  # few enough added to be folded row by row, not rebuilt


def _added_while_folds_wait(dsn: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An indexed collection of INDEXED rows, and ADDED rows left fresh (no fold ran yet)."""
    data = clustered_vectors(INDEXED, dim=256, seed=12)
    added = np.random.default_rng(8).normal(size=(ADDED, 256)).astype(np.float32)
    config = SearcherConfig(address="127.0.0.1:0", dsn=dsn)
    with Searcher(config) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=256))
            stub.Upsert(upsert_messages(name, data))
            assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
            searcher.store.maintenance.stop()
            stub.Upsert(upsert_messages(name, added, first_id=INDEXED))
    return data, added


def test_a_fold_cut_short_by_a_killed_searcher_loses_and_doubles_nothing_and_resumes(
    own_postgres: EmbeddedPostgres,
) -> None:
    dsn, name = own_postgres.dsn, "killed"
    data, added = _added_while_folds_wait(dsn, name)
    process, port = start_service("searcher", "--dsn", dsn)  # folds at start what is fresh
    try:
        _wait_until_folding(dsn, name, ADDED)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        end_process(process)
    process, port = start_service("searcher", "--dsn", dsn)
    try:
        channel, stub = searcher_stub(port)
        with channel:
            deadline = time.monotonic() + UPKEEP_S
            while stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows:
                assert time.monotonic() < deadline, "the fold did not resume"
                time.sleep(0.2)
    finally:
        end_process(process)
    stored = _stored(dsn, name)
    assert sorted(stored) == list(range(INDEXED + ADDED))
    assert np.allclose(np.stack([stored[i] for i in sorted(stored)]), np.vstack([data, added]))


def test_a_fold_cut_short_by_a_postgres_restart_loses_and_doubles_nothing_and_resumes(
    own_postgres: EmbeddedPostgres,
) -> None:
    dsn, name = own_postgres.dsn, "restarted"
    data, added = _added_while_folds_wait(dsn, name)
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=dsn)) as searcher:
        _wait_until_folding(dsn, name, ADDED)
        own_postgres.pg_ctl("stop", "-m", "immediate")
        time.sleep(1.5)  # the searcher sees the outage
        start_again(own_postgres)
        channel, stub = searcher_stub(searcher.port)
        with channel:
            deadline = time.monotonic() + UPKEEP_S
            while True:
                try:
                    if stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0:
                        break
                except grpc.RpcError as exc:  # the database is still coming back
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, "the fold did not resume"
                time.sleep(0.2)
    stored = _stored(dsn, name)
    assert sorted(stored) == list(range(INDEXED + ADDED))
    assert np.allclose(np.stack([stored[i] for i in sorted(stored)]), np.vstack([data, added]))
