"""The searcher's connection pool keeps connections for searches that bulk work cannot take."""

from __future__ import annotations

import contextlib

import pytest

from imgsearch.errors import Unavailable
from searcher.pool import RESERVED_FOR_REQUESTS, ConnectionPool


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
