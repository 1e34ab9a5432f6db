"""Least privilege in the database, as the README's security section sets it up: an owner role
migrates once; the run-time role has no DDL outside its data schema; a read-only role serves
searches and its writes are refused with PERMISSION_DENIED. And the Citus path, when a Citus
cluster is given."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psycopg2
import pytest

from imgsearch.v1 import searcher_pb2 as spb
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.server import Searcher
from tests.searcher_helpers import searcher_stub, upsert_messages, vector

# The statements of the README's "Database roles" recipe, run by an administrator.
ROLES_SQL = [
    "CREATE ROLE imgsearch_app LOGIN",
    "CREATE ROLE imgsearch_reader LOGIN",
    "GRANT USAGE ON SCHEMA imgsearch, imgsearch_data TO imgsearch_app, imgsearch_reader",
    "GRANT CREATE ON SCHEMA imgsearch_data TO imgsearch_app",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON imgsearch.collections, imgsearch.fresh_cells "
    "TO imgsearch_app",
    "GRANT SELECT ON imgsearch.collections, imgsearch.fresh_cells, "
    "public.imgsearch_schema_migrations TO imgsearch_app, imgsearch_reader",
    "ALTER DEFAULT PRIVILEGES FOR ROLE imgsearch_app IN SCHEMA imgsearch_data "
    "GRANT SELECT ON TABLES TO imgsearch_reader",
]


def _as(dsn: str, user: str) -> str:
    parts = urllib.parse.urlparse(dsn)
    netloc = f"{user}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunparse(parts._replace(netloc=netloc))


@pytest.fixture()
def roles_database(tmp_path: Path) -> Iterator[str]:
    """A fresh embedded PostgreSQL, migrated by its owner, with the two roles of the recipe."""
    with EmbeddedPostgres(tmp_path / "pg") as server:
        with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=server.dsn)) as owner:
            owner.store.open()  # the owner applies the migrations
        with psycopg2.connect(server.dsn) as conn, conn.cursor() as cur:
            for statement in ROLES_SQL:
                cur.execute(statement)
        conn.close()
        yield server.dsn


def test_the_run_time_role_and_a_read_only_role_work_with_least_privilege(
    roles_database: str,
) -> None:
    app = SearcherConfig(address="127.0.0.1:0", dsn=_as(roles_database, "imgsearch_app"))
    # Enough rows for the build to fit cells for the fresh rows: the reader reads them too.
    data = np.random.default_rng(0).random((1500, 3), dtype=np.float32)
    with Searcher(app) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            stub.CreateCollection(spb.CreateCollectionRequest(name="roles", dim=3), timeout=30)
            stub.Upsert(upsert_messages("roles", data, per_message=500), timeout=60)
            hits = stub.Search(spb.SearchRequest(collection="roles", id=5, top_k=1), timeout=10)
            assert hits.hits[0].id == 5
    reader = SearcherConfig(address="127.0.0.1:0", dsn=_as(roles_database, "imgsearch_reader"))
    with Searcher(reader) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            query = spb.SearchRequest(collection="roles", vector=vector(data[7]), top_k=1)
            assert stub.Search(query, timeout=10).hits[0].id == 7
            write = spb.UpsertRequest(
                collection="roles", items=[spb.Item(id=99, vector=vector([1, 2, 3]))]
            )
            with pytest.raises(grpc.RpcError) as raised:
                stub.Upsert(iter([write]), timeout=10)
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "database role may not do this" in raised.value.details()
    with psycopg2.connect(_as(roles_database, "imgsearch_app")) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("CREATE TABLE public.not_allowed (x int)")
    conn.close()


@pytest.mark.skipif(
    not os.environ.get("IMGSEARCH_TEST_CITUS_DSN"),
    reason="set IMGSEARCH_TEST_CITUS_DSN to a Citus coordinator with pgvector to run it",
)
def test_on_citus_collections_are_distributed_by_id_and_search_is_exact() -> None:
    dsn = os.environ["IMGSEARCH_TEST_CITUS_DSN"]
    data = np.random.default_rng(1).random((2000, 16), dtype=np.float32)
    with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=dsn)) as searcher:
        assert searcher.store.citus_version
        channel, stub = searcher_stub(searcher.port)
        with channel:
            names = stub.ListCollections(spb.ListCollectionsRequest(), timeout=10).collections
            if any(c.name == "citus_test" for c in names):  # left by an earlier run
                stub.DropCollection(spb.DropCollectionRequest(name="citus_test"), timeout=30)
            stub.CreateCollection(
                spb.CreateCollectionRequest(name="citus_test", dim=16), timeout=60
            )
            stub.Upsert(upsert_messages("citus_test", data, per_message=500), timeout=300)
            query = spb.SearchRequest(
                collection="citus_test", vector=vector(data[42]), top_k=10,
                params=spb.SearchParams(exact=True),
            )  # fmt: skip
            hits = [hit.id for hit in stub.Search(query, timeout=60).hits]
    expected = np.argsort(np.linalg.norm(data - data[42], axis=1), kind="stable")[:10]
    assert hits == [int(i) for i in expected]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT distribution_column FROM citus_tables WHERE table_name = %s::regclass",
            ('imgsearch_data."citus_test"',),
        )
        assert cur.fetchone() == ("id",)
    conn.close()
