"""Index builds cut short by a crash: what they leave is found and dropped when a searcher
starts, a build never takes a leftover for its own index, and the collection ends with a valid
index that searches use, saying in GetCollection what happened."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.schema import DATA_SCHEMA
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_stub,
    start_again,
    upsert_messages,
)

_names = itertools.count()
UPKEEP_S = 300  # a deadline for background builds and checks, not an expected duration


def _sql(dsn: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _indexes(dsn: str, table: str) -> dict[str, bool]:
    """The collection's HNSW indexes and whether each is valid."""
    rows = _sql(
        dsn,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = %s::regclass AND starts_with(c.relname, 'hnsw_')",
        f'{DATA_SCHEMA}."{table}"',
    )
    return dict(rows)  # type: ignore[arg-type]


def _searched_with(dsn: str, table: str) -> str:
    """The plan of a nearest-neighbour search of the collection's indexed rows, as the planner
    makes it."""
    ((indexed,),) = _sql(
        dsn, "SELECT index_segment FROM imgsearch.collections WHERE name = %s", table
    )
    plan = _sql(
        dsn,
        f'EXPLAIN SELECT id FROM {DATA_SCHEMA}."{table}" WHERE segment <= {int(indexed)} '
        f'ORDER BY embedding <-> (SELECT embedding FROM {DATA_SCHEMA}."{table}" LIMIT 1) '
        "LIMIT 10",
    )
    return "\n".join(line for (line,) in plan)


def _interrupt_a_concurrent_build(dsn: str, table: str, index: str) -> None:
    """Start CREATE INDEX CONCURRENTLY `index` and end its backend mid-build: what a crash
    leaves (an invalid index of that name)."""

    def build() -> None:
        try:
            _sql(
                dsn,
                f'CREATE INDEX CONCURRENTLY {index} ON {DATA_SCHEMA}."{table}" '
                "USING hnsw (embedding vector_l2_ops) WITH (m = 16, ef_construction = 400)",
            )
        except psycopg2.Error:
            pass  # terminated, as intended

    builder = threading.Thread(target=build)
    builder.start()
    deadline = time.monotonic() + 60
    while not (pids := _sql(dsn, "SELECT pid FROM pg_stat_progress_create_index")):
        assert time.monotonic() < deadline, "the build did not start"
        time.sleep(0.05)
    _sql(dsn, "SELECT pg_terminate_backend(%s)", pids[0][0])
    builder.join(60)
    assert _indexes(dsn, table)[index] is False


@pytest.fixture(params=ENGINES)
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "pg18-embedded":
        with EmbeddedPostgres(tmp_path / "pg") as server:
            yield server.dsn
    else:
        yield request.getfixturevalue("old_engine_dsn")


def _searcher(dsn: str) -> Searcher:
    return Searcher(SearcherConfig(address="127.0.0.1:0", dsn=dsn)).start()


def _create_and_load(stub, name: str, rows: int, seed: int, **params: int) -> None:  # type: ignore[no-untyped-def]
    """A collection `name` of `rows` clustered 128-d vectors, VECTOR kind (with `params`)."""
    index_params = pb.IndexParams(kind=pb.INDEX_KIND_VECTOR, **params)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=128, index_params=index_params))
    stub.Upsert(upsert_messages(name, clustered_vectors(rows, dim=128, seed=seed)))


def _loaded_collection(dsn: str, rows: int = 8000) -> tuple[str, pb.Collection]:
    """A collection with `rows` vectors, its index built and measured; no searcher left."""
    name = f"crash{next(_names)}"
    searcher = _searcher(dsn)
    try:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            _create_and_load(stub, name, rows, seed=3)
            assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
            collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    finally:
        searcher.stop()
    return name, collection


def test_what_an_interrupted_rebuild_left_is_dropped_at_start_and_never_taken_for_an_index(
    dsn: str,
) -> None:
    name, _ = _loaded_collection(dsn)
    (current,) = _indexes(dsn, name)
    leftover = _next_generation(current)
    _interrupt_a_concurrent_build(dsn, name, leftover)
    searcher = _searcher(dsn)
    try:
        assert _indexes(dsn, name) == {current: True}  # the leftover went at start
        channel, stub = searcher_stub(searcher.port)
        with channel:
            collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
            assert f"dropped an invalid index ({leftover}) left by an interrupted build" in (
                collection.index.note
            )
            # The next build makes the generation the crash left behind: a valid index, used.
            assert searcher.store is not None
            searcher.store.build_index(name)
            assert searcher.store.maintenance.wait_idle(UPKEEP_S)
        assert _indexes(dsn, name) == {leftover: True}
        assert f"using {leftover}" in _searched_with(dsn, name)
    finally:
        searcher.stop()


def test_a_recorded_index_left_invalid_is_built_again_at_start(dsn: str) -> None:
    """What the old IF NOT EXISTS build did after a crash: it recorded the invalid leftover as
    the collection's index and dropped the valid one, so every search was a full scan."""
    name, before = _loaded_collection(dsn)
    (current,) = _indexes(dsn, name)
    leftover, generation = _next_generation(current), before.index.generation + 1
    _interrupt_a_concurrent_build(dsn, name, leftover)
    _sql(
        dsn,
        "UPDATE imgsearch.collections SET index_generation = %s WHERE name = %s",
        generation,
        name,
    )
    _sql(dsn, f"DROP INDEX {DATA_SCHEMA}.{current}")
    searcher = _searcher(dsn)
    try:
        assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
        channel, stub = searcher_stub(searcher.port)
        with channel:
            collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    finally:
        searcher.stop()
    indexes = _indexes(dsn, name)
    assert list(indexes.values()) == [True], indexes  # one index, valid
    assert f"using {next(iter(indexes))}" in _searched_with(dsn, name)
    assert "it was the recorded one: the index is built again" in collection.index.note
    assert collection.index.generation == generation + 1
    assert collection.index.HasField("recall") and collection.index.recall >= 0.95


def _next_generation(index: str) -> str:
    """The name the next build of the collection gives its index (hnsw_<hash>_<generation>)."""
    base, generation = index.rsplit("_", 1)
    return f"{base}_{int(generation) + 1}"


def test_postgres_crashing_in_the_upkeeps_rebuild_ends_with_a_valid_index_after_restart(
    tmp_path: Path,
) -> None:
    """The issue as it was seen: a poor build (m=2) makes the upkeep rebuild CONCURRENTLY;
    PostgreSQL stops at once (as a crash does) in the middle; both start again."""
    with EmbeddedPostgres(tmp_path / "pg") as server:
        dsn = server.dsn
        name = f"crash{next(_names)}"
        searcher = _searcher(dsn)
        try:
            channel, stub = searcher_stub(searcher.port)
            with channel:
                _create_and_load(stub, name, 20_000, seed=5, m=2, ef_construction=4)
            deadline = time.monotonic() + UPKEEP_S
            while not _sql(dsn, "SELECT pid FROM pg_stat_progress_create_index"):
                assert time.monotonic() < deadline, "the upkeep did not rebuild"
                time.sleep(0.05)
            server.pg_ctl("stop", "-m", "immediate")
        finally:
            searcher.stop(grace_s=0)
        start_again(server)
        searcher = _searcher(dsn)
        try:
            assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
            channel, stub = searcher_stub(searcher.port)
            with channel:
                collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
        finally:
            searcher.stop()
        indexes = _indexes(dsn, name)
        assert list(indexes.values()) == [True], indexes  # one index, valid; nothing invalid
        (index,) = indexes
        assert f"using {index}" in _searched_with(dsn, name)
        assert "left by an interrupted build" in collection.index.note
        assert (collection.index_params.m, collection.index_params.ef_construction) == (16, 200)
        assert collection.index.recall >= 0.95


@pytest.mark.parametrize("engine", ENGINES)
def test_a_build_whose_graph_outgrows_its_memory_says_so(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = (
        {"data_dir": str(tmp_path / "pg")}
        if engine == "pg18-embedded"
        else {"dsn": request.getfixturevalue("old_engine_dsn")}
    )
    config = SearcherConfig(address="127.0.0.1:0", maintenance_work_mem="1MB", **where)
    name = f"spill{next(_names)}"
    with Searcher(config) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            _create_and_load(stub, name, 3000, seed=7)
            assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
            collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert "the build spilled to disk (hnsw graph no longer fits into maintenance_work_mem" in (
        collection.index.note
    )
    assert any("went on on disk" in r.getMessage() for r in caplog.records)


def test_postgres_crashing_while_one_graph_by_cell_is_repaired_leaves_it_whole_and_repaired_again(
    tmp_path: Path,
) -> None:
    """A poor graph among graphs by cell is rebuilt alone by REINDEX CONCURRENTLY; PostgreSQL
    stops at once in the middle; both start again: the graph the repair was replacing still
    serves, the copy it was building is dropped, and the check repairs the graph again."""
    with EmbeddedPostgres(tmp_path / "pg") as server:
        dsn = server.dsn
        name = f"crash{next(_names)}"
        config = SearcherConfig(address="127.0.0.1:0", dsn=dsn, graph_cells_from=10_000)
        searcher = Searcher(config).start()
        try:
            channel, stub = searcher_stub(searcher.port)
            with channel:
                _create_and_load(stub, name, 20_000, seed=5)
                assert searcher.store is not None
                assert searcher.store.maintenance.wait_idle(UPKEEP_S)
                collection, _ = searcher.store.catalogue.get(name, fresh=True)
                assert collection.graph_cells == 2
                graph = collection.index_name(cell=1)
                _sql(dsn, f"ALTER INDEX {DATA_SCHEMA}.{graph} SET (m = 2, ef_construction = 4)")
                _sql(dsn, f"REINDEX INDEX {DATA_SCHEMA}.{graph}")
                searcher.store.maintenance.schedule("check", name)
                deadline = time.monotonic() + UPKEEP_S
                while not _sql(dsn, "SELECT pid FROM pg_stat_progress_create_index"):
                    assert time.monotonic() < deadline, "the upkeep did not rebuild the graph"
                    time.sleep(0.02)
                server.pg_ctl("stop", "-m", "immediate")
        finally:
            searcher.stop(grace_s=0)
        start_again(server)
        left = _indexes(dsn, name)
        assert left[graph + "_ccnew"] is False  # the copy the crash cut short, invalid
        searcher = Searcher(config).start()
        try:
            assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
            after, _ = searcher.store.catalogue.get(name, fresh=True)
        finally:
            searcher.stop()
        assert _indexes(dsn, name) == dict.fromkeys(collection.index_names(), True)
        assert after.generation == collection.generation
        assert f"dropped an invalid index ({graph}_ccnew)" in after.index_note
        assert "1 of 2 graphs by cell (1), where the held-out queries lost" in after.index_note
        ((options,),) = _sql(dsn, f"SELECT reloptions FROM pg_class WHERE relname = '{graph}'")
        assert sorted(options) == ["ef_construction=400", "m=32"]
        assert after.recall is not None and after.recall >= 0.99
