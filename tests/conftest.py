"""Shared fixtures: a real PostgreSQL + pgvector for the whole session."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the run when a server or service the tests started is still running after them
    (checked after every other fixture has finished), and ends it so that it does not run on."""
    from tests.process_helpers import describe, end_processes, processes_left_behind

    started = time.time() - 1  # process start times are rounded
    basetemp = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + 15  # servers told to stop may take a moment to exit
    while (left := processes_left_behind(basetemp, started)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        described = [describe(process) for process in left]
        end_processes(left)
        pytest.fail(
            f"{len(left)} process(es) the tests started outlived them (now ended):\n  "
            + "\n  ".join(described),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """IMGSEARCH_TEST_DSN when set (an external PostgreSQL with pgvector), else an embedded one."""
    external = os.environ.get("IMGSEARCH_TEST_DSN")
    if external:
        yield external
        return
    from searcher.embedded import EmbeddedPostgres

    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data") as server:
        yield server.dsn


@pytest.fixture(scope="session")
def old_engine_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL 16 + pgvector 0.6.2 server from the old embedded engine (`pgserver` 0.1.4,
    a test-only dependency): the searcher must keep working on pgvector 0.6 through a DSN."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

    server = pgserver.get_server(
        tmp_path_factory.mktemp("old-engine") / "data", cleanup_mode="stop"
    )
    try:
        import psycopg2

        with psycopg2.connect(server.get_uri()) as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            assert cur.fetchone()[0] == "0.6.2"
        conn.close()
        yield server.get_uri()
    finally:
        server.cleanup()
