"""Coarse cells for the fresh rows (searcher.cells): a search scans the fresh rows of the cells
nearest to its query instead of all of them, still finds every added row by its own vector and
the true neighbours of held-out queries, and loses nothing when a writer's or a searcher's view
of the catalogue is older than the last build.

The searcher tests run on both engines, as tests/test_fresh_rows.py's do.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from imgsearch._convert import collection_stats
from imgsearch.cli.admin import stats_rows
from imgsearch.v1 import searcher_pb2 as pb
from searcher.catalogue import Metric
from searcher.cells import MIN_PROBES, MIN_ROWS, calibrated, cell_count, fit, fresh_probes
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.pgvector_io import Item
from searcher.queries import Effort, Filter, fresh_cells_scanned, fresh_rows_sql
from searcher.schema import DATA_SCHEMA, NO_CELL
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_on,
    searcher_stub,
    upsert_messages,
)
from tests.test_effort_calibration import collection as one_graph_collection
from tests.test_fresh_rows import UPKEEP_S, folds_paused, nearest

_names = itertools.count()
DIM = 256
CLUSTERS = 20


def _data(rows: int, seed: int) -> np.ndarray:
    """Clustered rows where cells pay: a search's true neighbours lie in a few of them."""
    return clustered_vectors(rows, dim=DIM, clusters=CLUSTERS, seed=seed)


@pytest.mark.parametrize("metric", list(Metric))
def test_a_vector_is_assigned_the_cell_its_own_search_scans_first(metric: Metric) -> None:
    data = _data(3000, seed=1)
    cells = calibrated(fit(data[:2000], metric, cell_count(2000)), data[:2000])
    assert len(cells.centroids) == 44 and np.isfinite(cells.centroids).all()
    assigned = cells.assign(data)
    assert [cells.nearest(row)[0] for row in data[::10]] == assigned[::10].tolist()
    assert MIN_PROBES <= len(cells.nearest(data[0])) == cells.probes < 22
    assert len(set(assigned.tolist())) > 20  # the rows spread over the cells


def test_calibration_scans_as_many_cells_as_the_true_neighbours_need() -> None:
    """Rows spread evenly (no clusters to follow) need many cells to hold their neighbours;
    clustered rows few."""
    spread = np.random.default_rng(2).normal(size=(2000, DIM)).astype(np.float32)
    even = calibrated(fit(spread, Metric.L2, 44), spread)
    clustered = _data(2000, seed=1)
    few = calibrated(fit(clustered, Metric.L2, 44), clustered)
    assert few.probes < 22 < even.probes


def test_cells_start_at_min_rows_and_stay_few() -> None:
    assert cell_count(MIN_ROWS - 1) == 0
    assert cell_count(MIN_ROWS) == 32
    assert cell_count(100_000) == cell_count(10_000_000) == 256


def test_a_sample_with_fewer_distinct_rows_than_cells_leaves_no_centroid_undefined() -> None:
    sample = np.repeat(np.eye(3, DIM, dtype=np.float32), 10, axis=0)
    cells = fit(sample, Metric.L2, 16)
    assert cells.centroids.shape == (16, DIM) and np.isfinite(cells.centroids).all()


def test_over_graphs_by_cell_a_search_scans_the_walked_graphs_fresh_rows_near_its_query() -> None:
    """Not the probes' least of 4 graph cells (of 8, that scanned half of the fresh rows), nor
    all of the walked graphs' fresh rows: those in the query's nearest finer cells."""
    data = _data(3000, seed=1)
    fine = calibrated(fit(data, Metric.L2, 44), data)
    graph_cells = replace(calibrated(fit(data, Metric.L2, 8), data), probes=MIN_PROBES, fine=fine)
    over_graphs = replace(one_graph_collection(), graph_cells=8, graph_probes=2, fine_cells=44)
    assert fresh_probes(over_graphs, graph_cells) == 2 * fine.probes
    assert fresh_probes(replace(over_graphs, graph_probes=3), graph_cells) == 3 * fine.probes
    # A row's cell names its graph and its finer cell; a search scans its walked graphs' rows
    # in its nearest finer cells, its own among them.
    rows = graph_cells.assign(data[:50])
    assert list(rows // 44) == list(replace(graph_cells, fine=None).assign(data[:50]))
    assert list(rows % 44) == list(fine.assign(data[:50]))
    for row, cell in zip(data[:50], rows, strict=True):
        walked = tuple(graph_cells.nearest(row, 2))
        scanned = fresh_cells_scanned(over_graphs, graph_cells, row, walked)
        assert scanned[0] == NO_CELL and cell in scanned
        assert len(scanned) == 1 + 2 * fine.probes
        assert {over_graphs.graph_of(c) for c in scanned[1:]} == set(walked)
    # One graph: its fresh rows' cells, as many as their probes.
    assert fresh_probes(one_graph_collection(), fine) == fine.probes >= MIN_PROBES


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


def indexed_collection(stub, searcher: Searcher, rows: int = 2000) -> str:  # type: ignore[no-untyped-def]
    name = f"cells{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM))
    stub.Upsert(upsert_messages(name, _data(rows, seed=11)))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    return name


def _fresh_cells(searcher: Searcher, name: str) -> list[int]:
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT cell FROM {} WHERE {} ORDER BY id").format(
                collection.table, collection.fresh
            )
        )
        return [row[0] for row in cur.fetchall()]


def test_added_rows_carry_cells_and_searches_scan_a_few_cells_yet_find_the_true_neighbours(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    added = _data(600, seed=12)
    queries = _data(40, seed=13)
    with folds_paused(searcher):
        stub.Upsert(upsert_messages(name, added, first_id=10_000, per_message=50))
        cells = _fresh_cells(searcher, name)
        assert len(cells) == 600 and min(cells) >= 0  # each one in a cell
        stats = stub.GetStats(pb.GetStatsRequest(collection=name))
        assert (stats.fresh_rows, stats.fresh_cells) == (600, 44)
        assert MIN_PROBES <= stats.fresh_cells_searched < 22
        rows = dict(stats_rows(collection_stats(stats)))["rows"]  # as `imgsearch stats` shows
        assert rows == (
            "2600 (600 added since the index was built, searched exactly until folded into it; "
            f"a search reads those in the {stats.fresh_cells_searched} of 44 cells nearest to "
            "its query)"
        )
        collection, _ = searcher.store.catalogue.get(name)
        scanned = _fresh_rows_scanned(searcher, collection, queries[0])
        assert 0 < scanned < 300  # a few cells of 44: not every fresh row
        for offset in range(0, 600, 37):
            (hit,) = nearest(stub, name, added[offset])
            assert (hit.id, hit.distance) == (10_000 + offset, pytest.approx(0.0, abs=1e-4))
        stored = np.concatenate([_data(2000, seed=11), added])
        ids = np.concatenate([np.arange(2000), np.arange(10_000, 10_600)])
        found = total = 0
        for query in queries:
            truth = ids[np.argsort(np.linalg.norm(stored - query, axis=1))[:10]]
            hits = {hit.id for hit in nearest(stub, name, query, top_k=10)}
            found, total = found + len(hits & set(truth.tolist())), total + 10
        assert found / total >= 0.98


def _fresh_rows_scanned(searcher: Searcher, collection, query: np.ndarray) -> int:  # type: ignore[no-untyped-def]
    """How many fresh rows the search for `query` reads (EXPLAIN ANALYZE of its fresh part)."""
    cells = searcher.store.cells.of(collection)
    assert cells is not None
    rows = fresh_rows_sql(collection, Filter(), with_cells=True)
    params = {"cells": [NO_CELL, *cells.nearest(query)]}
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM ({}) AS f").format(rows),
            params,
        )
        plan = cur.fetchone()[0][0]["Plan"]
    return int(plan["Plans"][0]["Actual Rows"])


def test_views_of_the_catalogue_older_than_a_build_lose_no_fresh_row(
    stub, searcher: Searcher
) -> None:
    name = indexed_collection(stub, searcher)
    store = searcher.store
    rng = np.random.default_rng(3)
    with folds_paused(searcher):
        before, has_index = store.catalogue.get(name, fresh=True)
        store.builder.build(before, concurrently=True)
        after, _ = store.catalogue.get(name, fresh=True)
        assert after.cells_segment == after.growing_segment > before.cells_segment > 0
        # A writer that has not seen the build writes with the old segment and its cells...
        late = rng.normal(size=(20, DIM)).astype(np.float32) * 4
        store.loader.write(before, [Item(20_000 + i, v) for i, v in enumerate(late)])
        # ...one that has, with the new ones; a searcher still holding the old view reads both.
        new = _data(50, seed=21)
        stub.Upsert(upsert_messages(name, new, first_id=30_000))
        # And the view while a build runs: writers are on the segment with the new cells, the
        # segment it seals is not yet indexed.
        building = replace(after, index_segment=before.index_segment)
        effort = Effort(ef_search=40, candidates=0)
        for view in (before, building, after):
            for first_id, rows in ((20_000, late), (30_000, new)):
                for offset in (0, len(rows) - 1):
                    result, _ = store.queries.nearest(
                        view, has_index, rows[offset], 1, effort=effort
                    )
                    assert result.hits[0].id == first_id + offset


def test_a_collection_made_before_cells_is_migrated_and_keeps_every_row(tmp_path: Path) -> None:
    data = _data(1500, seed=31)
    with EmbeddedPostgres(tmp_path / "pg") as postgres:
        with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres.dsn)) as first:
            channel, stub = searcher_stub(first.port)
            with channel:
                stub.CreateCollection(pb.CreateCollectionRequest(name="before", dim=DIM))
                stub.Upsert(upsert_messages("before", data))
        # Back to schema 3, as a searcher of that version left it.
        table = f'{DATA_SCHEMA}."before"'
        _sql(
            postgres.dsn,
            f"ALTER TABLE {table} DROP COLUMN cell",  # its (segment, cell) index goes with it
            f"CREATE INDEX segment_{hashlib.md5(b'before').hexdigest()} ON {table} (segment)",
            "DROP TABLE imgsearch.fresh_cells",
            "ALTER TABLE imgsearch.collections DROP COLUMN cells_segment",
            # and without the named vectors of schema 5, graphs by cell of 6 and their finer
            # cells of 7, which came after
            "ALTER TABLE imgsearch.collections DROP COLUMN parent, DROP COLUMN vector_name",
            "ALTER TABLE imgsearch.collections DROP COLUMN graph_cells, DROP COLUMN graph_probes",
            "ALTER TABLE imgsearch.collections DROP COLUMN graph_fine_cells",
            "DELETE FROM public.imgsearch_schema_migrations WHERE version >= 4",
        )
        with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=postgres.dsn)) as second:
            channel, stub = searcher_stub(second.port)
            with channel:
                added = _data(30, seed=32)
                stub.Upsert(upsert_messages("before", added, first_id=5000))
                for first_id, rows in ((0, data), (5000, added)):
                    for offset in (0, len(rows) - 1):
                        assert nearest(stub, "before", rows[offset])[0].id == first_id + offset
                assert stub.GetStats(pb.GetStatsRequest(collection="before")).row_count == 1530
        indexes = _sql(
            postgres.dsn,
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'before' "
            "AND indexname ~ '^(fresh|segment)_' ORDER BY indexname",
        )
        (name, definition), *others = indexes
        assert name == f"fresh_{hashlib.md5(b'before').hexdigest()}" and not others
        assert str(definition).endswith("USING btree (segment, cell)")


def _sql(dsn: str, *statements: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
