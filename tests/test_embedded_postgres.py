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


def test_a_new_data_directory_runs_postgresql_18_sized_for_the_machine(tmp_path: Path) -> None:
    from searcher.embedded import machine_memory_bytes

    with EmbeddedPostgres(tmp_path / "data") as server:
        conn = _connect(server.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version_num')::int / 10000")
            major = cur.fetchone()[0]
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            pgvector = cur.fetchone()[0]
            cur.execute(
                "SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'"
            )
            shared_buffers = cur.fetchone()[0]
            cur.execute("SELECT setting FROM pg_settings WHERE name = 'maintenance_work_mem'")
            maintenance_kb = int(cur.fetchone()[0])
        conn.close()
    assert (major, pgvector) == (18, "0.8.5")
    memory = machine_memory_bytes()
    assert shared_buffers == min(max(memory // 4, 128 << 20), 8192 << 20) // (1 << 20) << 20
    assert maintenance_kb << 10 == min(max(memory // 4, 64 << 20), 16384 << 20) // (1 << 20) << 20
    tuning = (tmp_path / "data" / "imgsearch.conf").read_text()
    assert "sized for its machine" in tuning and "effective_cache_size" in tuning


def test_a_data_directory_of_the_old_engine_is_refused_then_upgraded_in_place(
    tmp_path: Path,
) -> None:
    """The old embedded engine (pgserver 0.1.4: PostgreSQL 16 + pgvector 0.6.2) made this
    directory and a searcher stored a collection in it. The new engine refuses it, untouched,
    saying how to move it; --upgrade-data-dir moves it, and the collection is searchable."""
    import warnings

    import grpc

    from imgsearch.errors import EmbeddedDatabaseError
    from imgsearch.v1 import searcher_pb2 as pb
    from searcher.config import SearcherConfig
    from searcher.server import Searcher
    from tests.searcher_helpers import clustered_vectors, searcher_stub, upsert_messages, vector

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

    data_dir = tmp_path / "pgdata"
    data = clustered_vectors(500, dim=16, seed=3)
    old = pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        with Searcher(SearcherConfig(address="127.0.0.1:0", dsn=old.get_uri())) as searcher:
            channel, stub = searcher_stub(searcher.port)
            with channel:
                stub.CreateCollection(pb.CreateCollectionRequest(name="kept", dim=16))
                stub.Upsert(upsert_messages("kept", data))
    finally:
        old.cleanup()
    assert (data_dir / "PG_VERSION").read_text().strip() == "16"

    with pytest.raises(EmbeddedDatabaseError) as refused:
        Searcher(SearcherConfig(address="127.0.0.1:0", data_dir=str(data_dir))).start()
    message = str(refused.value)
    assert "holds a PostgreSQL 16 database (the old embedded engine, pgserver" in message
    assert "--upgrade-data-dir" in message and "imgsearch export-features" in message
    assert (data_dir / "PG_VERSION").read_text().strip() == "16"  # untouched

    command = [sys.executable, "-m", "searcher", "--data-dir", str(data_dir)]
    refused_cli = subprocess.run(
        [*command, "--address", "127.0.0.1:0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused_cli.returncode == 2 and "--upgrade-data-dir" in refused_cli.stderr

    from searcher.embedded import upgrade_data_dir

    upgrade_data_dir(data_dir)
    assert (data_dir / "PG_VERSION").read_text().strip() == "18"
    assert (tmp_path / "pgdata.old").is_dir()
    with Searcher(SearcherConfig(address="127.0.0.1:0", data_dir=str(data_dir))) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            stats = stub.GetStats(pb.GetStatsRequest(collection="kept"))
            assert (stats.row_count, stats.pgvector_version) == (500, "0.8.5")
            assert stats.postgres_version.startswith("18")
            hits = stub.Search(pb.SearchRequest(collection="kept", vector=vector(data[7]), top_k=3))
            assert hits.hits[0].id == 7
            # Its index (VECTOR, made by pgvector 0.6.2) is kept and used.
            assert stats.index_present and not hits.exact
            with pytest.raises(grpc.RpcError):
                stub.Search(pb.SearchRequest(collection="nope", vector=vector(data[7]), top_k=3))
