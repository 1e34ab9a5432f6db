"""Graphs by coarse cell (searcher.cell_graphs): a collection large enough, when its index is
first built after a bulk load, is indexed as one small HNSW graph per cell; a search walks the
graphs of its query's nearest cells and stays complete and exact: every stored, added, updated
or orphaned row is found by its own vector, filters keep min(top_k, matching), rebuilds keep the
cells, and the searcher's start-up clean-up keeps every graph it recorded.

The searcher here takes graphs by cell from 1,500 rows (the service's default is 200,000), so
that a few thousand rows exercise them; on both engines, as the other searcher tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from psycopg2 import sql

from imgsearch._convert import collection_stats
from imgsearch.cli.admin import stats_rows
from imgsearch.v1 import searcher_pb2 as pb
from searcher import cell_graphs
from searcher.cell_graphs import ROWS_PER_GRAPH, graph_count, orphan_index_name
from searcher.cells import MAX_CELLS
from searcher.leftovers import clean_up
from searcher.pgvector_io import Item, vector_literal
from searcher.queries import Filter, fresh_cells_scanned, fresh_rows_sql, graphs_walked
from searcher.recall import draw_sample
from searcher.schema import DATA_SCHEMA, NO_CELL
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_on,
    searcher_stub,
    upsert_messages,
)
from tests.test_fresh_rows import UPKEEP_S, folds_paused, nearest

_names = itertools.count()
DIM = 64
ROWS = 3000
FROM_ROWS = 1500


def _data(rows: int, seed: int) -> np.ndarray:
    return clustered_vectors(rows, dim=DIM, clusters=20, seed=seed)


def test_a_graph_holds_about_twelve_thousand_rows_two_to_the_most_cells() -> None:
    assert graph_count(3000) == 2
    assert graph_count(200_000) == 16
    assert graph_count(1_000_000) == 1_000_000 // ROWS_PER_GRAPH == 80
    assert graph_count(100_000_000) == MAX_CELLS


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    settings = {"graph_cells_from": FROM_ROWS, "exact_filter_rows": 50}
    with searcher_on(request.param, request, tmp_path_factory, **settings) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


def loaded(stub, searcher: Searcher, rows: int = ROWS, labels: list[str] | None = None) -> str:  # type: ignore[no-untyped-def]
    """A collection bulk-loaded with `rows` clustered vectors (ids 0..rows-1), built and
    calibrated by the upkeep."""
    name = f"graphs{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM))
    stub.Upsert(upsert_messages(name, _data(rows, seed=1), labels=labels))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    return name


def _hnsw_indexes(searcher: Searcher, name: str) -> list[tuple[str, str, bool]]:
    """(name, predicate, valid) of each HNSW index on the collection's table."""
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid), i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass "
            "AND starts_with(c.relname, 'hnsw_') ORDER BY 1",
            (collection.qualified_table,),
        )
        return [tuple(row) for row in cur.fetchall()]


def _cells_of(searcher: Searcher, name: str, ids: list[int]) -> dict[int, tuple[int, int]]:
    """Each row's (segment, cell)."""
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT id, segment, cell FROM {} WHERE id = ANY(%s)").format(collection.table),
            (ids,),
        )
        return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def _found_as_first(stub, name: str, rows: np.ndarray, first_id: int, step: int = 1) -> None:  # type: ignore[no-untyped-def]
    for offset in range(0, len(rows), step):
        (hit,) = nearest(stub, name, rows[offset])
        assert (hit.id, hit.distance) == (first_id + offset, pytest.approx(0.0, abs=1e-4))


def test_a_large_bulk_load_is_indexed_as_one_graph_per_cell_that_searches_walk(
    stub, searcher: Searcher
) -> None:
    name = loaded(stub, searcher)
    collection, has_index = searcher.store.catalogue.get(name, fresh=True)
    assert has_index and collection.graph_cells == 2
    # Each graph's rows are sorted into finer cells too: a graph holds a range of cells.
    per_graph = collection.fine_cells
    assert per_graph == 54  # as one graph of 3000 rows would have (cells.cell_count)
    indexes = _hnsw_indexes(searcher, name)
    assert [valid for _, _, valid in indexes] == [True, True]
    predicates = sorted(predicate for _, predicate, _ in indexes)
    assert all(f"segment <= {collection.index_segment}" in p for p in predicates)
    assert [
        p.endswith(f"(cell >= {graph * per_graph}) AND (cell < {(graph + 1) * per_graph}))")
        for graph, p in enumerate(predicates)
    ] == [True] * 2
    # Every row has its cell: none is left out of the graphs.
    cells = [cell for _, cell in _cells_of(searcher, name, list(range(ROWS))).values()]
    assert all(0 <= cell < 2 * per_graph for cell in cells)
    assert len(set(cells)) > 2 * per_graph // 2  # the finer cells are used, not one per graph

    state = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection.index
    assert state.graphs == 2 and 1 <= state.graphs_walked <= 2
    stats = collection_stats(stub.GetStats(pb.GetStatsRequest(collection=name)))
    index_row = dict(stats_rows(stats))["index"]  # as `imgsearch stats` shows it
    assert index_row.endswith(
        f"; 2 graphs, one per coarse cell, a search walking the {state.graphs_walked} nearest "
        "to its query"
    )

    _found_as_first(stub, name, _data(ROWS, seed=1), 0, step=97)
    stored, queries = _data(ROWS, seed=1), _data(40, seed=2) + 0.05
    found = 0
    for query in queries:
        truth = np.argsort(np.linalg.norm(stored - query, axis=1))[:10]
        hits = nearest(stub, name, query, top_k=10)
        assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)
        found += len({hit.id for hit in hits} & set(truth.tolist()))
    assert found / (10 * len(queries)) >= 0.95


def test_a_recall_sample_knows_which_of_its_query_s_graphs_hold_each_true_neighbour(
    stub, searcher: Searcher
) -> None:
    name = loaded(stub, searcher)
    store = searcher.store
    collection, _ = store.catalogue.get(name, fresh=True)
    cells = store.cells.graphs_of(collection)
    assert cells is not None and len(cells.centroids) == collection.graph_cells == 2
    search = store._approximate_search(collection)
    sample = draw_sample(store.pool, collection, 200, search, graph_cells=cells)
    assert sample is not None and sample.neighbour_walks is not None
    # By numpy: each query's 10 nearest rows, the graph each row's cell is in, and that
    # graph's rank among the query's graphs (1: its nearest).
    stored = _data(ROWS, seed=1)
    cell_of = _cells_of(searcher, name, list(range(ROWS)))
    graph_of = np.array([cell_of[i][1] // collection.fine_cells for i in range(ROWS)])
    expected = []
    for query, ranks in zip(sample.queries, cells.ranks(sample.queries), strict=True):
        nearest_ten = np.argsort(np.linalg.norm(stored - query, axis=1))[:10]
        expected.append(sorted(ranks[graph_of[nearest_ten]] + 1))
    assert [sorted(row) for row in sample.neighbour_walks.tolist()] == expected
    assert sample.walks_holding(0.5) == 1 and sample.walks_holding(1.0) <= 2
    # A collection without graphs by cell: its sample does not know.
    assert store.cells.graphs_of(replace(collection, graph_cells=0)) is None


def test_one_prepared_search_statement_walks_the_graph_of_whichever_cell_it_is_given(
    stub, searcher: Searcher
) -> None:
    """The walked cells are parameters of the prepared statement: planned with their values
    (custom plans), each run takes the partial index of its own cell and no other."""
    name = loaded(stub, searcher)
    store = searcher.store
    collection, _ = store.catalogue.get(name, fresh=True)
    text = store.queries._approximate_sql(collection, Filter(), True, True, 1)
    with store.pool.connection() as conn, conn, conn.cursor() as cur:
        # As searcher.prepared prepares it: parameters $1.., LIMITs written in.
        statement = text.as_string(cur) % {
            "query": "$1",
            "cells": "$2",
            "graph_0": "$3",
            "top_k": "10",
            "candidates": "40",
        }
        cur.execute("PREPARE walk (vector, integer[], integer) AS " + statement)
        cur.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        for own in (0, 1, 0):
            cur.execute(
                "EXPLAIN EXECUTE walk(%s, %s, %s)",
                (vector_literal(_data(1, seed=3)[0]), [NO_CELL], own),
            )
            plan = "\n".join(row[0] for row in cur.fetchall())
            assert f"using {collection.index_name(cell=own)} " in plan
            assert f"using {collection.index_name(cell=1 - own)} " not in plan
        cur.execute("DEALLOCATE walk")


def test_rows_added_after_are_found_at_once_then_folded_into_their_cells_graphs(
    stub, searcher: Searcher
) -> None:
    name = loaded(stub, searcher)
    added = _data(200, seed=4) + 0.01
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, first_id=10_000, per_message=16))
        assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 200
        _found_as_first(stub, name, added, 10_000, step=13)
    assert searcher.store.maintenance.wait_idle(UPKEEP_S)
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    placed = _cells_of(searcher, name, list(range(10_000, 10_200)))
    assert {segment for segment, _ in placed.values()} == {collection.index_segment}
    cells = searcher.store.cells.of(collection)
    assert cells is not None  # each folded row keeps the cell it was written with
    assert [placed[10_000 + i][1] for i in range(200)] == list(cells.assign(added))
    _found_as_first(stub, name, added, 10_000, step=13)


def test_a_search_reads_the_fresh_rows_near_its_query_in_the_graphs_it_walks_and_no_others(
    stub, searcher: Searcher
) -> None:
    """Fresh rows of graphs by cell are sorted into finer cells, as one graph's are: a search
    reads a few of them (walking 2 graphs of 2, scanning their whole cells read all 600)."""
    name = f"graphs{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=256))
    stored = clustered_vectors(ROWS, dim=256, clusters=20, seed=1)  # where cells pay
    stub.Upsert(upsert_messages(name, stored))
    store = searcher.store
    assert store.maintenance.wait_idle(UPKEEP_S)
    added = clustered_vectors(600, dim=256, clusters=20, seed=7)
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, first_id=30_000, per_message=50))
        collection, _ = store.catalogue.get(name, fresh=True)
        cells = store.cells.of(collection)
        assert cells is not None and cells.fine is not None
        stats = stub.GetStats(pb.GetStatsRequest(collection=name))
        assert stats.fresh_rows == 600 and stats.fresh_cells == 2 * collection.fine_cells
        assert stats.fresh_cells_searched == collection.graph_probes * cells.fine.probes
        queries = clustered_vectors(40, dim=256, clusters=20, seed=9)
        for query in queries[:5]:
            scanned = fresh_cells_scanned(
                collection, cells, query, graphs_walked(collection, cells, query)
            )
            assert 0 < _rows_read(searcher, collection, scanned) < 600 // 8  # here 30 to 47
        _found_as_first(stub, name, added, 30_000, step=11)
        stored = np.concatenate([stored, added])
        ids = np.concatenate([np.arange(ROWS), np.arange(30_000, 30_600)])
        found = 0
        for query in queries:
            truth = ids[np.argsort(np.linalg.norm(stored - query, axis=1))[:10]]
            found += len({hit.id for hit in nearest(stub, name, query, top_k=10)} & set(truth))
        assert found / (10 * len(queries)) >= 0.95


def _rows_read(searcher: Searcher, collection, scanned: list[int]) -> int:  # type: ignore[no-untyped-def]
    """How many fresh rows a search that scans `scanned` cells reads (EXPLAIN ANALYZE)."""
    rows = fresh_rows_sql(collection, Filter(), with_cells=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM ({}) AS f").format(rows),
            {"cells": scanned},
        )
        plan = cur.fetchone()[0][0]["Plan"]
    return int(plan["Actual Rows"]) if "Plans" not in plan else int(plan["Plans"][0]["Actual Rows"])


def test_graphs_built_before_finer_cells_keep_their_layout_through_additions_and_rebuilds(
    stub, searcher: Searcher
) -> None:
    """A collection whose graphs by cell were built before finer cells (schema 6: a row's
    cell is its graph, a graph's predicate cell = k) is rebuilt, added to and folded as such."""
    name = loaded(stub, searcher)
    store = searcher.store
    collection, _ = store.catalogue.get(name, fresh=True)
    with store.pool.connection() as conn, conn, conn.cursor() as cur:  # as schema 6 left it
        cur.execute(
            sql.SQL("UPDATE {} SET cell = cell / %s WHERE cell <> %s").format(collection.table),
            (collection.fine_cells, NO_CELL),
        )
        cur.execute(
            "UPDATE imgsearch.fresh_cells SET fine_centroids = NULL, fine_probes = 0 "
            "WHERE collection = %s",
            (name,),
        )
        cur.execute(
            "UPDATE imgsearch.collections SET graph_fine_cells = 0 WHERE name = %s", (name,)
        )
    store.build_index(name)
    assert store.maintenance.wait_idle(UPKEEP_S)
    rebuilt, _ = store.catalogue.get(name, fresh=True)
    assert (rebuilt.graph_cells, rebuilt.fine_cells) == (2, 0)
    predicates = sorted(predicate for _, predicate, _ in _hnsw_indexes(searcher, name))
    assert [p.endswith(f"(cell = {cell}))") for cell, p in enumerate(predicates)] == [True] * 2
    _found_as_first(stub, name, _data(ROWS, seed=1), 0, step=97)
    added = _data(100, seed=10) + 0.01
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, first_id=40_000, per_message=25))
        placed = _cells_of(searcher, name, list(range(40_000, 40_100)))
        assert {cell for _, cell in placed.values()} <= {0, 1}
        _found_as_first(stub, name, added, 40_000, step=7)
    assert store.maintenance.wait_idle(UPKEEP_S)
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0
    _found_as_first(stub, name, added, 40_000, step=7)


def test_rows_written_without_a_cell_are_found_and_then_given_their_cells(
    stub, searcher: Searcher
) -> None:
    """A writer that had not seen the build by cell writes into the segment the graphs hold,
    without cells: no graph takes those rows, yet every search finds them, and a fold gives
    them their cells."""
    name = loaded(stub, searcher)
    store = searcher.store
    orphans = _data(30, seed=5) + 0.02
    with folds_paused(searcher):
        collection, _ = store.catalogue.get(name, fresh=True)
        before = replace(collection, growing_segment=collection.index_segment, cells_segment=0)
        store.loader.write(before, [Item(20_000 + i, v) for i, v in enumerate(orphans)])
        placed = _cells_of(searcher, name, list(range(20_000, 20_030)))
        assert set(placed.values()) == {(collection.index_segment, NO_CELL)}
        assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 30
        _found_as_first(stub, name, orphans, 20_000)
    assert store.maintenance.wait_idle(UPKEEP_S)
    store.maintenance.schedule("fold", name)
    assert store.maintenance.wait_idle(UPKEEP_S)
    placed = _cells_of(searcher, name, list(range(20_000, 20_030)))
    cells = store.cells.of(collection)
    assert cells is not None
    assert [placed[20_000 + i][1] for i in range(30)] == list(cells.assign(orphans))
    assert stub.GetStats(pb.GetStatsRequest(collection=name)).fresh_rows == 0
    _found_as_first(stub, name, orphans, 20_000)


def test_a_row_rewritten_while_the_cells_are_written_keeps_no_stale_cell(
    stub, searcher: Searcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that had not seen the build rewrites rows after the build read their vectors
    and before it wrote their cells: those rows must not get the cells of their old vectors
    (graphs that a search for their new vectors may never walk); they stay without a cell,
    found by every search, until a fold gives them their new vectors' cells."""
    store = searcher.store
    name = f"graphs{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM))
    moved = _data(10, seed=6)[::-1] + 0.5  # far from where rows 0..9 were
    read_pages = cell_graphs._read_pages

    def rewritten_after_reading(cur, collection, *args):  # type: ignore[no-untyped-def]
        read = read_pages(cur, collection, *args)
        if len(read[0]) and 0 in read[0]:
            old_view = replace(
                collection, growing_segment=collection.index_segment, cells_segment=0
            )
            store.loader.write(old_view, [Item(i, moved[i]) for i in range(10)])
        return read

    monkeypatch.setattr(cell_graphs, "_read_pages", rewritten_after_reading)
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, _data(ROWS, seed=1)))
        collection, _ = store.catalogue.get(name, fresh=True)
        assert collection.graph_cells == 2
        placed = _cells_of(searcher, name, list(range(10)))
        assert set(placed.values()) == {(collection.index_segment, NO_CELL)}
        _found_as_first(stub, name, moved, 0)
    monkeypatch.undo()
    assert store.maintenance.wait_idle(UPKEEP_S)
    store.maintenance.schedule("fold", name)
    assert store.maintenance.wait_idle(UPKEEP_S)
    cells = store.cells.of(collection)
    assert cells is not None
    placed = _cells_of(searcher, name, list(range(10)))
    assert [placed[i][1] for i in range(10)] == list(cells.assign(moved))
    _found_as_first(stub, name, moved, 0)


def test_updates_and_deletes_of_indexed_rows_take_effect_at_once(stub, searcher: Searcher) -> None:
    name = loaded(stub, searcher)
    stored = _data(ROWS, seed=1)
    moved = _data(5, seed=6) * -1.0  # far from where they were
    stub.Upsert(upsert_messages(name, moved, first_id=100))
    for offset, vector in enumerate(moved):
        (hit,) = nearest(stub, name, vector)
        assert (hit.id, hit.distance) == (100 + offset, pytest.approx(0.0, abs=1e-4))
        (hit,) = nearest(stub, name, stored[100 + offset])
        assert hit.id != 100 + offset
    stub.Delete(pb.DeleteRequest(collection=name, ids=[200, 201]))
    for item in (200, 201):
        hits = nearest(stub, name, stored[item], top_k=3)
        assert item not in {hit.id for hit in hits} and len(hits) == 3


def test_a_filter_keeps_min_top_k_matching_over_the_graphs_and_the_fresh_rows(
    stub, searcher: Searcher
) -> None:
    labels = ["rare" if i % 50 == 0 else "common" for i in range(ROWS)]  # 60 rare rows
    name = loaded(stub, searcher, labels=labels)
    added = _data(10, seed=7)
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, labels=["rare"] * 10, first_id=30_000))
        rare = {i for i, label in enumerate(labels) if label == "rare"} | set(range(30_000, 30_010))
        for query in _data(5, seed=8):
            hits = nearest(stub, name, query, top_k=100, filter=pb.Filter(labels=["rare"]))
            assert {hit.id for hit in hits} == rare  # all 70 of them, from every cell


def test_a_rebuild_keeps_the_cells_and_replaces_every_graph(stub, searcher: Searcher) -> None:
    name = loaded(stub, searcher)
    store = searcher.store
    before, _ = store.catalogue.get(name, fresh=True)
    centroids = store.cells.of(before).centroids.copy()
    store.build_index(name)
    assert store.maintenance.wait_idle(UPKEEP_S)
    after, has_index = store.catalogue.get(name, fresh=True)
    assert has_index and after.generation > before.generation and after.graph_cells == 2
    assert np.array_equal(store.cells.of(after).centroids, centroids)
    assert sorted(index for index, _, _ in _hnsw_indexes(searcher, name)) == sorted(
        after.index_names()
    )
    _found_as_first(stub, name, _data(ROWS, seed=1), 0, step=211)


def test_the_start_up_clean_up_keeps_every_recorded_graph(stub, searcher: Searcher) -> None:
    name = loaded(stub, searcher)
    store = searcher.store
    collection, _ = store.catalogue.get(name, fresh=True)
    # A graph of a generation no build recorded: what a crash between build and record leaves;
    # and the copy of a graph that a repair's REINDEX CONCURRENTLY left when it was cut short.
    leftovers = [
        collection.index_name(collection.generation + 1, 0),
        collection.index_name(cell=1) + cell_graphs.REINDEX_COPY,
    ]
    with store.pool.connection() as conn, conn, conn.cursor() as cur:
        for leftover in leftovers:
            cur.execute(
                sql.SQL("CREATE INDEX {} ON {} (id) WHERE cell = 0").format(
                    sql.Identifier(leftover), collection.table
                )
            )
    cleaned = clean_up(store.builder)
    assert cleaned.get(name) == "check"
    assert sorted(index for index, _, _ in _hnsw_indexes(searcher, name)) == sorted(
        collection.index_names()
    )
    assert store.maintenance.wait_idle(UPKEEP_S)


def test_duplicates_are_found_across_the_graphs(stub, searcher: Searcher) -> None:
    name = loaded(stub, searcher)
    stored = _data(ROWS, seed=1)
    copies = stored[[5, 900, 2100]] + 1e-3
    stub.Upsert(upsert_messages(name, copies, first_id=50_000))
    assert searcher.store.maintenance.wait_idle(UPKEEP_S)
    request = pb.FindDuplicatesRequest(collection=name, max_distance=0.01)
    groups = [
        sorted(member.id for member in event.group.members)
        for event in stub.FindDuplicates(request)
        if event.WhichOneof("event") == "group"
    ]
    assert sorted(groups) == [[5, 50_000], [900, 50_001], [2100, 50_002]]


def test_rows_without_a_cell_have_an_index_of_their_own_that_searches_read(
    stub, searcher: Searcher
) -> None:
    """The rows no graph takes are found without reading the table: a partial index of them,
    which the search's scan of them uses."""
    name = loaded(stub, searcher)
    store = searcher.store
    collection, _ = store.catalogue.get(name, fresh=True)
    with store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i JOIN pg_class c "
            "ON c.oid = i.indexrelid WHERE c.relname = %s AND c.relnamespace = %s::regnamespace",
            (orphan_index_name(name), DATA_SCHEMA),
        )
        assert cur.fetchone()[0] == f"(cell = '{NO_CELL}'::integer)"
        cur.execute(
            sql.SQL("EXPLAIN SELECT count(*) FROM ({}) AS fresh").format(
                fresh_rows_sql(collection, Filter(), with_cells=True)
            ),
            {"cells": [NO_CELL]},
        )
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert orphan_index_name(name) in plan
