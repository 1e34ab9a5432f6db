"""Unfiltered searches run as server-side prepared statements (searcher.prepared): the query
vector is sent once, and PostgreSQL parses the search no more. What must hold: the answers
are those of the first search and of an exact one, each run still walks the index (planned
with its values, never by a generic plan that would not), a collection dropped and made again
under its name is searched afresh, and a connection keeps a bounded number of statements.

The searcher's tests run on both engines, as tests/test_searcher_service.py's do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extras import execute_values

from imgsearch.v1 import searcher_pb2 as pb
from searcher.kinds import IndexKind, spec
from searcher.pgvector_io import vector_literal
from searcher.prepared import (
    PLANNED_ONCE,
    PLANNED_PER_RUN,
    PreparedStatements,
    vector_index_walks,
)
from searcher.server import Searcher
from tests.searcher_helpers import (
    ENGINES,
    clustered_vectors,
    searcher_on,
    searcher_stub,
    upsert_messages,
    vector,
)

DIM = 64
ROWS = 3000
UPKEEP_S = 300  # a deadline for background builds, not an expected duration
# PostgreSQL plans a prepared statement afresh for its first five runs, then may keep a
# generic plan: searches past that run on it.
PAST_CUSTOM_PLANS = 8
KINDS = {
    "vector": pb.INDEX_KIND_VECTOR,
    "halfvec": pb.INDEX_KIND_HALFVEC,
    "binary": pb.INDEX_KIND_BINARY,
}
_names = itertools.count()


@pytest.fixture(scope="module", params=ENGINES)
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    with searcher_on(request.param, request, tmp_path_factory) as running:
        yield running


@pytest.fixture()
def stub(searcher: Searcher) -> Iterator[Any]:
    channel, stub = searcher_stub(searcher.port)
    with channel:
        yield stub


def indexed_collection(stub: Any, searcher: Searcher, kind: int, data: np.ndarray) -> str:
    name = f"prepared{next(_names)}"
    stub.CreateCollection(
        pb.CreateCollectionRequest(name=name, dim=DIM, index_params=pb.IndexParams(kind=kind))
    )
    stub.Upsert(upsert_messages(name, data))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    return name


def search(stub: Any, name: str, query: np.ndarray, **params: int) -> list[tuple[int, float]]:
    response = stub.Search(
        pb.SearchRequest(
            collection=name, vector=vector(query), top_k=10, params=pb.SearchParams(**params)
        )
    )
    return [(hit.id, hit.distance) for hit in response.hits]


def statements(searcher: Searcher) -> list[tuple[str, str, str, bool]]:
    """(name, text, parameter types, whether it runs on its generic plan) of every search
    statement prepared on any idle connection of the searcher's pool. The searcher plans each
    once with values, to compare: a statement planned with values again ran on such plans."""
    assert searcher.store is not None
    pool = searcher.store.pool
    found = []
    with pool._lock:
        idle = list(pool._idle)
    for conn in idle:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT name, statement, parameter_types::text, custom_plans <= 1 "
                "FROM pg_prepared_statements "
                "WHERE name LIKE 'imgsearch_search_%'"
            )
            found += cur.fetchall()
        conn.rollback()
    return found


def explain(conn: Any, statement: str, args: list[Any], planned: sql.Composable) -> Any:
    with conn.cursor() as cur:
        cur.execute(planned)
        cur.execute("EXPLAIN (FORMAT JSON) " + statement, args)
        plan = cur.fetchone()[0][0]["Plan"]
    conn.rollback()
    return plan


def plans(
    conn: Any, name: str, text: str, types: str, query: np.ndarray, generic: bool
) -> tuple[Any, Any]:
    """The plan PostgreSQL runs a prepared search by (planned as the searcher has it run:
    `generic`, or with its values), and the plan of the same search written out with its
    values as literals."""
    args = [vector_literal(query)] + ([[-1]] if "integer[]" in types else [])
    placeholders = sql.SQL(", ").join(sql.Placeholder() * len(args)).as_string(conn)
    planned = PLANNED_ONCE if generic else PLANNED_PER_RUN
    prepared = explain(conn, f'EXECUTE "{name}"({placeholders})', args, planned)
    written = text.split(" AS ", 1)[1].replace("%", "%%")
    written = written.replace("$1", "%s::vector").replace("$2", "%s::integer[]")
    literal = explain(
        conn, written, [args[0]] * written.count("%s::vector") + args[1:], PLANNED_PER_RUN
    )
    return prepared, literal


@pytest.mark.parametrize("kind", KINDS)
def test_a_prepared_search_answers_as_the_first_one_did_and_walks_the_index_every_time(
    stub: Any, searcher: Searcher, kind: str
) -> None:
    assert searcher.store is not None
    if searcher.store.pgvector < spec(IndexKind[kind.upper()]).pgvector_since:
        pytest.skip(f"this engine's pgvector has no {kind} kind")
    data = clustered_vectors(ROWS, dim=DIM, seed=3)
    name = indexed_collection(stub, searcher, KINDS[kind], data)
    query = data[17] + 0.01
    first = search(stub, name, query)
    assert first[0][0] == 17
    for _ in range(PAST_CUSTOM_PLANS):
        assert search(stub, name, query) == first
    # Exact distances whatever the kind; the approximate kinds may miss a far neighbour.
    ids = [hit for hit, _ in first]
    true = np.linalg.norm(data[ids] - query.astype(np.float32), axis=1)
    np.testing.assert_allclose([d for _, d in first], true, rtol=1e-4)
    exact = {hit for hit, _ in search(stub, name, query, exact=True)}
    assert len(exact & set(ids)) >= 8

    ours = [s for s in statements(searcher) if f'"{name}"' in s[1]]
    assert ours, "the search was not prepared"
    assert searcher.store is not None
    with searcher.store.pool.connection() as conn:
        conn.autocommit = False
        for statement, text, types, generic in ours:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (statement,))
                if cur.fetchone() is None:
                    continue  # prepared on another connection of the pool
            conn.rollback()
            # A generic plan runs only where it walks the vector indexes the literal query
            # walks; for a VECTOR index of these rows it would sort the whole table.
            prepared, literal = plans(conn, statement, text, types, query, generic)
            if generic:
                assert vector_index_walks(prepared) == vector_index_walks(literal) != []
            else:
                assert prepared == literal
            if kind == "vector":
                assert vector_index_walks(prepared), prepared


def test_a_collection_dropped_and_made_again_under_its_name_is_searched_afresh(
    stub: Any, searcher: Searcher
) -> None:
    before = clustered_vectors(ROWS, dim=DIM, seed=4)
    name = indexed_collection(stub, searcher, pb.INDEX_KIND_VECTOR, before)
    for _ in range(PAST_CUSTOM_PLANS):
        assert search(stub, name, before[5])[0] == (5, pytest.approx(0.0, abs=1e-3))
    stub.DropCollection(pb.DropCollectionRequest(name=name))

    after = clustered_vectors(ROWS, dim=DIM, seed=5)
    stub.CreateCollection(
        pb.CreateCollectionRequest(
            name=name, dim=DIM, index_params=pb.IndexParams(kind=pb.INDEX_KIND_VECTOR)
        )
    )
    stub.Upsert(upsert_messages(name, after))
    assert searcher.store is not None and searcher.store.maintenance.wait_idle(UPKEEP_S)
    for _ in range(3):
        found = search(stub, name, after[5])
        assert found[0] == (5, pytest.approx(0.0, abs=1e-3))
        expected = np.linalg.norm(after - after[5], axis=1)
        for hit, distance in found:
            assert distance == pytest.approx(float(expected[hit]), rel=1e-3, abs=1e-3)


def test_a_connection_keeps_its_most_recent_statements_and_deallocates_the_oldest(
    postgres_dsn: str,
) -> None:
    prepared = PreparedStatements(per_connection=2)
    conn = psycopg2.connect(postgres_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:

            def run(number: int) -> list[tuple[int]]:
                query = sql.SQL("SELECT generate_series(1, %(top)s) * %(factor)s::int + {}").format(
                    sql.Literal(number)
                )
                prepared.execute(
                    cur,
                    [sql.SQL("SET LOCAL work_mem = '4MB'")],
                    ("series", number),
                    lambda: query,
                    {"factor": 10},
                    {"factor": "integer"},
                    {"top": 3},
                )
                return cur.fetchall()

            assert run(1) == [(11,), (21,), (31,)]
            assert run(2) == [(12,), (22,), (32,)]
            assert run(3) == [(13,), (23,), (33,)]
            cur.execute("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
            kept = [row[0] for row in cur.fetchall()]
            assert len(kept) == 2 == prepared.count(conn)
            assert "+ 2" in kept[0] and "+ 3" in kept[1]
            assert run(1) == [(11,), (21,), (31,)]  # prepared again, the oldest (2) let go
            assert prepared.count(conn) == 2
    finally:
        conn.close()


def test_a_statement_lost_by_the_session_is_answered_unprepared_from_then_on(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    prepared = PreparedStatements()
    conn = psycopg2.connect(postgres_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:

            def run() -> list[tuple[int]]:
                query = sql.SQL("SELECT generate_series(1, %(top)s) * %(factor)s::int")
                prepared.execute(
                    cur, [], "lost", lambda: query, {"factor": 2}, {"factor": "integer"}, {"top": 2}
                )
                return cur.fetchall()

            assert run() == [(2,), (4,)]
            # What a pooler in transaction mode does: the next transaction meets a session
            # that never saw the statement.
            cur.execute("DEALLOCATE ALL")
            assert run() == [(2,), (4,)]
            assert not prepared.enabled
            assert "searches run unprepared from now on" in caplog.text
            assert run() == [(2,), (4,)]
            cur.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


def test_a_statement_runs_on_its_generic_plan_only_where_that_plan_walks_the_same_index(
    postgres_dsn: str,
) -> None:
    """Planning is a tenth of a search: a statement whose generic plan walks the vector index
    its values' plan walks is planned once. Over a graph by cell the cell is a parameter, and a
    generic plan cannot take that cell's partial index: such statements are planned per run."""
    prepared = PreparedStatements()
    data = clustered_vectors(ROWS, dim=DIM, seed=6)
    table = sql.Identifier(f"plans{next(_names)}")
    conn = psycopg2.connect(postgres_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE TABLE {} (id int, cell int, embedding vector({}))").format(
                    table, sql.Literal(DIM)
                )
            )
            rows = [(i, i % 2, vector_literal(v)) for i, v in enumerate(data)]
            execute_values(cur, sql.SQL("INSERT INTO {} VALUES %s").format(table), rows)
            cur.execute(
                sql.SQL(
                    "CREATE INDEX ON {0} USING hnsw (embedding vector_l2_ops); "
                    "CREATE INDEX ON {0} USING hnsw (embedding vector_l2_ops) WHERE cell = 1; "
                    "ANALYZE {0}"
                ).format(table)
            )

            def nearest(where: str, query: np.ndarray, *, prepare: bool = True) -> list[int]:
                statement = sql.SQL(
                    "SELECT id FROM {} {} ORDER BY embedding <-> %(query)s::vector LIMIT %(top_k)s"
                ).format(table, sql.SQL(where))
                types = {"query": "vector", **({"cell": "integer"} if where else {})}
                params = {"query": vector_literal(query), "cell": 1}
                before = [sql.SQL("SET LOCAL hnsw.ef_search = 40")]
                if prepare:
                    literals = {"top_k": 10}
                    prepared.execute(cur, before, where, lambda: statement, params, types, literals)
                else:  # the literal query, planned with its values
                    cur.execute(sql.SQL("; ").join([*before, statement]), {**params, "top_k": 10})
                return [row[0] for row in cur.fetchall()]

            def plans_made(where: str) -> tuple[int, int]:
                """(generic, with values) plans made for the statement, EXPLAINs included."""
                cur.execute(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE %s",
                    (f'%{table.string}" {where.replace("%(cell)s", "$2")} ORDER BY%',),
                )
                (made,) = cur.fetchall()
                return made

            for i in range(PAST_CUSTOM_PLANS):
                for where in ("", "WHERE cell = %(cell)s"):
                    query = data[i] + 0.01
                    found = nearest(where, query)
                    assert found == nearest(where, query, prepare=False)
                    assert len(found) == 10 and (not where or all(hit % 2 for hit in found))
            # Each was planned both ways once, to compare, when it was prepared.
            assert plans_made("") == (1 + PAST_CUSTOM_PLANS, 1)
            assert plans_made("WHERE cell = %(cell)s") == (1, 1 + PAST_CUSTOM_PLANS)
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.close()
