"""Cells written as a bulk load arrives (searcher.generation_cells): an Upsert stream that says
how many items it writes into an empty collection large enough for graphs by cell has its
rows' cells fitted after its first LOAD_FIT_ROWS rows and written with every later message, so
the build at its end rewrites only the rows before the fit; cells that do not suit the rows
the build finds (a stream sorted by category, a count that was wrong) are fitted afresh and
every row rewritten, as for a stream that says nothing. Either way every row is found.

Which rows a build rewrote is read from their versions: a row keeps the transaction id of the
Upsert message that wrote it (xmin) until an UPDATE writes a new version of it, and the build
writes the cells by one UPDATE.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from psycopg2 import sql

from imgsearch.v1 import searcher_pb2 as pb
from searcher.catalogue import Collection, named_vector_table
from searcher.cell_graphs import graph_count
from searcher.generation_cells import LOAD_FIT_ROWS
from searcher.schema import NO_CELL
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_on,
    searcher_stub,
    upsert_messages,
    vector,
)
from tests.test_fresh_rows import UPKEEP_S, nearest

_names = itertools.count()
DIM = 64
PER_MESSAGE = 1000
# The rows a stream has written when its cells are fitted: whole messages.
BEFORE_FIT = -(-LOAD_FIT_ROWS // PER_MESSAGE) * PER_MESSAGE
HELD_OUT = 2000  # the searcher's recall sample: rows each build holds out of its graphs


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    settings = {"graph_cells_from": 1500, "recall_sample": HELD_OUT}
    with searcher_on(request.param, request, tmp_path_factory, **settings) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[object]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


def _loaded(stub, searcher: Searcher, data: np.ndarray, expected_items: int) -> str:  # type: ignore[no-untyped-def]
    """A new collection bulk loaded with `data` (ids from 0) by one stream announcing
    `expected_items`, built and checked."""
    name = f"loadcells{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM))
    messages = upsert_messages(name, data, per_message=PER_MESSAGE, expected_items=expected_items)
    assert stub.Upsert(messages).inserted_count == len(data)
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    return name


def _rewritten(searcher: Searcher, name: str) -> int:
    """Rows that share one version: those the build's one UPDATE gave their cells (each Upsert
    message writes PER_MESSAGE rows in a transaction of its own)."""
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT count(*) FROM {} GROUP BY xmin::text::bigint ORDER BY 1 DESC LIMIT 1"
            ).format(collection.table)
        )
        rows: int = cur.fetchone()[0]
    return rows


def _rows_without_cell(searcher: Searcher, name: str) -> int:
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    with searcher.store.pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE cell = %s").format(collection.table),
            (NO_CELL,),
        )
        rows: int = cur.fetchone()[0]
    return rows


def _each_found_as_itself(stub, name: str, data: np.ndarray, ids: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    for row in ids:
        (hit,) = nearest(stub, name, data[row])
        assert (hit.id, hit.distance) == (row, pytest.approx(0.0, abs=1e-4))


def test_an_announced_bulk_load_writes_its_cells_as_it_goes_and_the_build_rewrites_only_the_rows_before_the_fit(  # noqa: E501
    stub, searcher: Searcher
) -> None:
    rows = 60_000
    data = clustered_vectors(rows, dim=DIM, clusters=20, seed=1)
    announced = _loaded(stub, searcher, data, expected_items=rows)
    silent = _loaded(stub, searcher, data, expected_items=0)

    # Without the count, the build gives every row its cell; with it, only those written
    # before the fit (but the rows it holds out of its graphs: they move with their cells).
    assert rows - HELD_OUT <= _rewritten(searcher, silent) <= rows
    assert BEFORE_FIT - HELD_OUT <= _rewritten(searcher, announced) <= BEFORE_FIT
    collection, has_index = searcher.store.catalogue.get(announced, fresh=True)
    assert has_index and collection.graph_cells == graph_count(rows) == 4
    assert collection.fine_cells and collection.graph_probes >= 2
    assert _rows_without_cell(searcher, announced) == 0
    checked = stub.GetCollection(pb.GetCollectionRequest(name=announced)).collection.index
    assert checked.HasField("recall") and checked.recall >= 0.9
    # Rows from before the fit and after it, in every graph, are each their own nearest.
    picked = np.random.default_rng(3).choice(rows, 60, replace=False)
    _each_found_as_itself(stub, announced, data, np.sort(picked))


def test_the_tables_of_a_collections_named_vectors_have_their_cells_written_as_the_load_goes_too(  # noqa: E501
    stub, searcher: Searcher
) -> None:
    """Each named vector's table gets cells of its own (fitted on its own vectors) at the same
    point of the stream, so its build too rewrites only the rows before the fit."""
    rows, gem_dim = 40_000, 32
    own = clustered_vectors(rows, dim=DIM, clusters=20, seed=11)
    gem = clustered_vectors(rows, dim=gem_dim, clusters=12, seed=12)
    name = f"loadcells{next(_names)}"
    gem_spec = pb.NamedVector(name="gem", dim=gem_dim)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM, vectors=[gem_spec]))
    messages = (
        pb.UpsertRequest(
            collection=name,
            expected_item_count=rows if start == 0 else 0,
            items=[
                pb.Item(id=i, vector=vector(own[i]), vectors={"gem": vector(gem[i])})
                for i in range(start, start + PER_MESSAGE)
            ],
        )
        for start in range(0, rows, PER_MESSAGE)
    )
    assert stub.Upsert(messages).inserted_count == rows
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)

    for table in (name, named_vector_table(name, "gem")):
        assert BEFORE_FIT - HELD_OUT <= _rewritten(searcher, table) <= BEFORE_FIT
        assert _rows_without_cell(searcher, table) == 0
        collection, has_index = searcher.store.catalogue.get(table, fresh=True)
        assert has_index and collection.graph_cells == graph_count(rows) == 3
    for row in np.random.default_rng(13).choice(rows, 30, replace=False):
        query = pb.SearchRequest(
            collection=name, vector=vector(gem[row]), top_k=1, vector_name="gem"
        )
        hit = stub.Search(query).hits[0]
        assert (hit.id, hit.distance) == (row, pytest.approx(0.0, abs=1e-4))


def test_a_load_sorted_by_category_is_given_cells_fitted_afresh_on_all_its_rows(
    stub, searcher: Searcher
) -> None:
    # The cells are fitted on its first categories; then a new category, far from them and
    # larger than all of them, would pile into one cell: more than 3 times a graph's mean.
    early = clustered_vectors(BEFORE_FIT, dim=DIM, clusters=20, seed=1)
    late = clustered_vectors(50_000, dim=DIM, clusters=5, seed=2) + np.float32(40.0)
    data = np.concatenate([early, late])
    name = _loaded(stub, searcher, data, expected_items=len(data))

    assert _rewritten(searcher, name) >= len(data) - HELD_OUT
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    assert collection.graph_cells == graph_count(len(data))
    assert _rows_without_cell(searcher, name) == 0
    picked = np.random.default_rng(4).choice(len(data), 40, replace=False)
    _each_found_as_itself(stub, name, data, np.sort(picked))


def test_a_load_that_writes_far_fewer_items_than_it_announced_is_given_cells_for_what_it_wrote(
    stub, searcher: Searcher
) -> None:
    rows = 40_000
    data = clustered_vectors(rows, dim=DIM, clusters=20, seed=5)
    name = _loaded(stub, searcher, data, expected_items=1_000_000)

    assert _rewritten(searcher, name) >= rows - HELD_OUT
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    assert collection.graph_cells == graph_count(rows) == 3
    picked = np.random.default_rng(6).choice(rows, 40, replace=False)
    _each_found_as_itself(stub, name, data, np.sort(picked))


def test_a_load_that_reaches_its_fit_while_a_build_of_the_collection_runs_goes_on_without_cells(
    stub, searcher: Searcher
) -> None:
    # Another searcher's build holds the collection's build lock; the stream does not wait
    # for it, and its own build at the end writes every row's cell.
    rows = 40_000
    data = clustered_vectors(rows, dim=DIM, clusters=20, seed=7)
    name = f"loadcells{next(_names)}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=DIM))
    collection, _ = searcher.store.catalogue.get(name, fresh=True)
    done: list[pb.UpsertResponse] = []
    with searcher.store.pool.connection() as other, other.cursor() as cur:
        other.autocommit = True
        cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"build:{name}",))
        load = threading.Thread(
            target=lambda: done.append(
                stub.Upsert(upsert_messages(name, data, expected_items=rows), timeout=300)
            )
        )
        load.start()
        deadline = time.monotonic() + 120
        while _row_count(cur, collection) < BEFORE_FIT + PER_MESSAGE:  # past its fit
            assert load.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        assert searcher.store.catalogue.get(name, fresh=True)[0].cells_segment == 0
        cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"build:{name}",))
        other.autocommit = False
    load.join(timeout=300)
    assert done and done[0].inserted_count == rows
    assert searcher.store.maintenance.wait_idle(UPKEEP_S)
    assert _rewritten(searcher, name) >= rows - HELD_OUT
    assert searcher.store.catalogue.get(name, fresh=True)[0].graph_cells == graph_count(rows)
    picked = np.random.default_rng(8).choice(rows, 30, replace=False)
    _each_found_as_itself(stub, name, data, np.sort(picked))


def _row_count(cur: Any, collection: Collection) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(collection.table))
    rows: int = cur.fetchone()[0]
    return rows
