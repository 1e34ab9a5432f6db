"""A poor graph among graphs by cell (searcher.repairs, searcher.weak_graphs): the check finds
it by where its held-out sample's neighbours were lost and rebuilds it alone, in place, with m
doubled; the other graphs stay as they were, and later builds keep its larger m. On both
engines, with the searcher of tests/test_cell_graphs.py (graphs by cell from 1,500 rows)."""

from __future__ import annotations

import re
from unittest.mock import ANY

import pytest
from psycopg2 import sql

from imgsearch._convert import collection_stats
from imgsearch.cli.admin import stats_rows
from imgsearch.v1 import searcher_pb2 as pb
from searcher import repairs
from searcher.kinds import EFFORT_LADDER
from searcher.schema import DATA_SCHEMA
from searcher.server import Searcher
from tests.test_cell_graphs import ROWS, _data, _found_as_first, loaded, searcher, stub
from tests.test_fresh_rows import UPKEEP_S

__all__ = ["searcher", "stub"]  # the fixtures, as test_cell_graphs.py makes them


def _built_poor(searcher: Searcher, graph: str, *, m: int) -> None:
    """Build the graph by cell `graph` again with `m` and ef_construction 2m: as poor as a
    build may leave one graph among good ones."""
    with searcher.store.pool.connection() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "ALTER INDEX {0} SET (m = {1}, ef_construction = {2}); REINDEX INDEX {0}"
                ).format(sql.Identifier(DATA_SCHEMA, graph), sql.Literal(m), sql.Literal(2 * m))
            )
        conn.autocommit = False


def _graph_builds(searcher: Searcher, name: str) -> list[tuple[list[str], int]]:
    """(reloptions, relfilenode) of each of the collection's current graphs by cell: a graph
    built again has a new file."""
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        found = []
        for index in collection.index_names():
            cur.execute(
                "SELECT reloptions, relfilenode FROM pg_class WHERE oid = %s::regclass",
                (f"{DATA_SCHEMA}.{index}",),
            )
            options, node = cur.fetchone()
            found.append((sorted(options), node))
        return found


def _index_state(stub, name: str) -> pb.IndexState:  # type: ignore[no-untyped-def]
    return stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index


def test_a_poor_graph_among_good_ones_is_rebuilt_alone_in_place_with_m_doubled(
    stub, searcher: Searcher
) -> None:
    """One of a build's graphs by cell came out poor (at 1M rows, the loss of a build that met
    the target at no effort): the check finds it by where its sample's neighbours were lost,
    rebuilds it alone with m doubled, and calibrates again; the next build keeps its m."""
    name = loaded(stub, searcher)
    store = searcher.store
    before, _ = store.catalogue.get(name, fresh=True)
    assert list(_index_state(stub, name).rebuilt_graphs) == []  # every graph at m=16
    _built_poor(searcher, before.index_name(cell=1), m=2)
    (good, _) = _graph_builds(searcher, name)
    assert list(_index_state(stub, name).rebuilt_graphs) == [
        pb.RebuiltGraphs(graphs=1, m=2, ef_construction=4)  # as PostgreSQL holds it
    ]
    store.maintenance.schedule("check", name)
    assert store.maintenance.wait_idle(UPKEEP_S)

    after, _ = store.catalogue.get(name, fresh=True)
    assert after.generation == before.generation  # no new generation: graph 0 kept as it was
    assert _graph_builds(searcher, name) == [good, (["ef_construction=400", "m=32"], ANY)]
    assert re.search(
        r"1 of 2 graphs by cell \(1\), where the held-out queries lost their neighbours, rebuilt "
        r"with m=32, ef_construction=400: recall@10 was [01]\.\d+ at the cheapest effort "
        r"\(ef_search 40, 2 graphs walked\) at m=16, ef_construction=200",
        after.index_note,
    )
    assert after.recall is not None and after.recall >= 0.99
    _found_as_first(stub, name, _data(ROWS, seed=1), 0, step=97)
    # GetCollection says which graphs differ from the collection's m, and `imgsearch stats` too.
    assert list(_index_state(stub, name).rebuilt_graphs) == [
        pb.RebuiltGraphs(graphs=1, m=32, ef_construction=400)
    ]
    stats = collection_stats(stub.GetStats(pb.GetStatsRequest(collection=name)))
    assert re.fullmatch(
        r"HNSW over \w+, m=16, ef_construction=200, build .*; 2 graphs, .*; 1 of them rebuilt "
        r"with m=32, ef_construction=400",
        dict(stats_rows(stats))["index"],
    )

    store.build_index(name)
    assert store.maintenance.wait_idle(UPKEEP_S)
    rebuilt = _graph_builds(searcher, name)
    assert [options for options, _ in rebuilt] == [
        ["ef_construction=200", "m=16"],
        ["ef_construction=400", "m=32"],
    ]
    note = store.catalogue.get(name, fresh=True)[0].index_note
    assert "graphs by cell repaired before: 1 (m=32, ef_construction=400)" in note


def test_a_few_poor_graphs_that_cost_every_search_more_effort_are_rebuilt_alone(
    stub, searcher: Searcher, caplog: pytest.LogCaptureFixture
) -> None:
    """Graphs by cell that miss the target at the cheapest effort, their loss there in a few
    graphs (at 1M rows one poor graph of 80 took searches from ef_search 40 to 64): those
    graphs are rebuilt alone before the calibration climbs the ladder (at 1M it climbed for
    100 s first), and searches stay at the cheapest effort."""
    name = loaded(stub, searcher)
    store = searcher.store
    before, _ = store.catalogue.get(name, fresh=True)
    _built_poor(searcher, before.index_name(cell=1), m=10)  # met at ef_search 80, say
    with caplog.at_level("DEBUG", logger="searcher.effort"):
        store.maintenance.schedule("check", name)
        assert store.maintenance.wait_idle(UPKEEP_S)
    measured = re.findall(r"ef_search (\d+), candidates \d+: recall@10", caplog.text)
    assert set(measured) == {str(EFFORT_LADDER[0])}  # no step above the cheapest searched
    after, _ = store.catalogue.get(name, fresh=True)
    assert (after.generation, after.ef_search) == (before.generation, EFFORT_LADDER[0])
    assert re.search(
        r"1 of 2 graphs by cell \(1\), where the held-out queries lost their neighbours, rebuilt "
        r"with m=32, ef_construction=400: recall@10 was [01]\.\d+ at the cheapest effort",
        after.index_note,
    )
    assert after.recall is not None and after.recall >= 0.99


def test_a_build_still_poor_after_the_first_look_is_rebuilt_whole_without_those_graphs_again(
    stub, searcher: Searcher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first look rebuilt a poor graph, and the check still finds the build poor: the
    whole index is built again as a new generation, and the graph is not rebuilt a second time
    first. Made so here by the first look's rebuild being as poor as the graph (m=2), and the
    check asking for a repair whatever it measures."""
    name = loaded(stub, searcher)
    store = searcher.store
    before, _ = store.catalogue.get(name, fresh=True)
    _built_poor(searcher, before.index_name(cell=1), m=2)
    parameters = repairs._repair_parameters
    asked: list[int] = []

    def first_as_poor(collection):  # type: ignore[no-untyped-def]
        asked.append(collection.m)
        return (2, 4) if len(asked) == 1 else parameters(collection)

    monkeypatch.setattr(repairs, "_repair_parameters", first_as_poor)
    monkeypatch.setattr(repairs.Repairs, "wanted", lambda *_: True)
    with caplog.at_level("WARNING", logger="searcher.repairs"):
        store.maintenance.schedule("check", name)
        assert store.maintenance.wait_idle(UPKEEP_S)
    graphs_rebuilt = re.findall(r"graphs by cell \(([\d, ]+)\), where", caplog.text)
    assert graphs_rebuilt == ["1"]  # by the first look, once
    after, _ = store.catalogue.get(name, fresh=True)
    assert after.generation == before.generation + 1
    assert (after.m, after.ef_construction) == (32, 400)
    assert re.search(r"; rebuilt with m=32, ef_construction=400: ", after.index_note)
    _found_as_first(stub, name, _data(ROWS, seed=1), 0, step=97)
