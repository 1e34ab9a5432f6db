"""The embedded PostgreSQL + pgvector: real vectors, persistence, sharing between processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from pgvector.psycopg2 import register_vector

from searcher.embedded import EmbeddedPostgres
from tests.conftest import ROOT


def _connect(dsn: str):  # type: ignore[no-untyped-def]
    conn = psycopg2.connect(dsn)
    register_vector(conn)
    return conn


def test_a_1000d_vector_round_trips_and_l2_distance_matches_numpy(postgres_dsn: str) -> None:
    rng = np.random.default_rng(7)
    stored = rng.normal(size=1000).astype(np.float32)
    query = rng.normal(size=1000).astype(np.float32)
    conn = _connect(postgres_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE items (id bigint PRIMARY KEY, embedding vector(1000))")
            cur.execute("INSERT INTO items VALUES (%s, %s)", (1, stored))
            cur.execute("SELECT embedding, embedding <-> %s FROM items WHERE id = 1", (query,))
            round_tripped, distance = cur.fetchone()
    finally:
        conn.close()
    np.testing.assert_array_equal(round_tripped.to_numpy(), stored)
    expected = float(np.linalg.norm(stored.astype(np.float64) - query.astype(np.float64)))
    assert distance == pytest.approx(expected, abs=1e-4)


def test_restarting_the_same_data_directory_keeps_the_rows(tmp_path: Path) -> None:
    vector = np.arange(1000, dtype=np.float32) / 1000
    with EmbeddedPostgres(tmp_path / "data") as server:
        conn = _connect(server.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (id bigint PRIMARY KEY, embedding vector(1000))")
            cur.execute("INSERT INTO kept VALUES (%s, %s)", (42, vector))
        conn.close()
    with EmbeddedPostgres(tmp_path / "data") as server:
        conn = _connect(server.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, embedding FROM kept")
            rows = cur.fetchall()
        conn.close()
    assert [row[0] for row in rows] == [42]
    np.testing.assert_array_equal(rows[0][1].to_numpy(), vector)


def test_a_second_process_shares_the_server_and_leaving_does_not_stop_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    other_process = textwrap.dedent(
        f"""
        import psycopg2
        from searcher.embedded import EmbeddedPostgres
        with EmbeddedPostgres({str(data_dir)!r}) as server:
            with psycopg2.connect(server.dsn) as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO shared VALUES (2)")
            print(server.dsn)
        """
    )
    with EmbeddedPostgres(data_dir) as server:
        conn = psycopg2.connect(server.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE shared (id bigint PRIMARY KEY)")
            cur.execute("INSERT INTO shared VALUES (1)")
        result = subprocess.run(
            [sys.executable, "-c", other_process], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == server.dsn
        # The other process has detached; our open connection and the server are still alive.
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM shared ORDER BY id")
            assert [row[0] for row in cur.fetchall()] == [1, 2]
        conn.close()


def test_a_process_killed_without_detaching_does_not_keep_the_server_alive(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from searcher.embedded import EmbeddedPostgres; "
            f"EmbeddedPostgres({str(data_dir)!r}).start(); print('up',flush=True); time.sleep(300)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        finally:
            holder.kill()
    server = EmbeddedPostgres(data_dir)
    server.start()
    pid_file = data_dir / "postmaster.pid"
    assert pid_file.exists()
    server.stop()
    # We were the last live user, so the server stopped and removed its pid file.
    assert not pid_file.exists()
