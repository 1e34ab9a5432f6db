"""Shared fixtures: a real PostgreSQL + pgvector for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
