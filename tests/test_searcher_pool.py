"""The searcher's connection pool keeps connections for searches that bulk work cannot take."""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np
import pytest

from imgsearch.errors import Unavailable
from searcher.catalogue import Metric
from searcher.pgvector_io import Item
from searcher.pool import BULK_NICE, RESERVED_FOR_REQUESTS, ConnectionPool
from searcher.queries import Filter, SearchResult
from searcher.recall import ShadowQuery
from searcher.settings import StoreSettings
from searcher.store import VectorStore

_names = itertools.count()


def test_a_search_finds_a_connection_while_bulk_work_holds_all_it_may(postgres_dsn: str) -> None:
    pool = ConnectionPool(postgres_dsn, max_size=RESERVED_FOR_REQUESTS + 2, wait_s=0.5)
    try:
        assert pool.max_bulk == 2
        with contextlib.ExitStack() as held:
            for _ in range(pool.max_bulk):
                held.enter_context(pool.connection(bulk=True))
            with pytest.raises(Unavailable, match="free for bulk work"):
                with pool.connection(bulk=True):
                    pass
            with pool.connection() as a, pool.connection() as b:
                for conn in (a, b):
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                        assert cur.fetchone() == (1,)
                    conn.rollback()
                assert pool.in_use == pool.max_size
        # Released: bulk work has its share again.
        with pool.connection(bulk=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
    finally:
        pool.close()


def test_a_pool_of_one_still_lets_bulk_work_run(postgres_dsn: str) -> None:
    pool = ConnectionPool(postgres_dsn, max_size=1)
    try:
        assert pool.max_bulk == 1
        with pool.connection(bulk=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        pool.close()


def test_bulk_work_runs_on_backends_of_lower_priority_never_lent_to_searches(
    postgres_dsn: str,
) -> None:
    pool = ConnectionPool(postgres_dsn, max_size=4, bulk_nice=BULK_NICE)
    try:
        with pool.connection(bulk=True) as bulk:
            bulk_pid = _backend_pid(bulk)
        with pool.connection() as plain:
            plain_pid = _backend_pid(plain)
        assert plain_pid != bulk_pid  # the idle bulk connection is not lent to a search
        assert os.getpriority(os.PRIO_PROCESS, bulk_pid) == BULK_NICE
        assert os.getpriority(os.PRIO_PROCESS, plain_pid) < BULK_NICE
        with pool.connection(bulk=True) as again:
            assert _backend_pid(again) == bulk_pid  # and is kept for bulk work
    finally:
        pool.close()


def test_the_upkeeps_and_the_shadow_monitors_searches_never_take_a_searchs_connection(
    postgres_dsn: str,
) -> None:
    """Their searches are bulk work: while bulk work holds all it may, they wait (here, give up)
    and a search runs; and their exact scans leave no setting behind on the connection."""
    pool = ConnectionPool(postgres_dsn, max_size=RESERVED_FOR_REQUESTS + 2, wait_s=0.5)
    store = VectorStore(pool, StoreSettings(shadow_share=0))
    store.open()
    try:
        name = f"background{next(_names)}_{os.getpid()}"
        store.create_collection(name, 8, Metric.L2)
        data = np.random.default_rng(9).normal(size=(50, 8)).astype(np.float32)
        session = store.begin_upsert(name)
        session.write([Item(i, vector) for i, vector in enumerate(data)])
        session.close()
        assert store.maintenance.wait_idle(60)
        collection, _ = store.catalogue.get(name, fresh=True)
        shadow = ShadowQuery(collection, data[3], 3, Filter(), SearchResult([], exact=False))
        with contextlib.ExitStack() as held:
            for _ in range(pool.max_bulk):
                held.enter_context(pool.connection(bulk=True))
            with pytest.raises(Unavailable, match="free for bulk work"):
                store._shadow_exact(shadow)
            assert store.search(name, data[3], 3).hits[0].id == 3
        assert store._shadow_exact(shadow)[0].id == 3
        with contextlib.ExitStack() as held:
            for _ in range(pool.max_bulk):
                conn = held.enter_context(pool.connection(bulk=True))
                with conn.cursor() as cur:
                    cur.execute("SHOW max_parallel_workers_per_gather")
                    assert cur.fetchone()[0] != "0"
                conn.rollback()
    finally:
        store.close()
        pool.close()


def _backend_pid(conn) -> int:  # type: ignore[no-untyped-def]
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    conn.rollback()
    return pid
