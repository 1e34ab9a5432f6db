"""Faults, with real processes: a service killed (SIGKILL) mid-work, PostgreSQL stopped and
restarted under load, a service told to stop (SIGTERM) under load. Nothing committed is lost,
nothing is half-written, errors say what happened, and a re-run completes the work."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psycopg2
import pytest

from imgsearch.cli.ingest import image_files, stable_id
from imgsearch.v1 import searcher_pb2 as spb
from searcher.embedded import EmbeddedPostgres
from tests import images
from tests.conftest import ROOT
from tests.process_helpers import end_process, start_service
from tests.searcher_helpers import searcher_stub, start_again, upsert_messages, vector

pytestmark = pytest.mark.slow


def _count(dsn: str, collection: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM imgsearch_data."{collection}"')
        (n,) = cur.fetchone()
    conn.close()
    return int(n)


def _ids(dsn: str, collection: str) -> list[int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT id FROM imgsearch_data."{collection}" ORDER BY id')
        ids = [row[0] for row in cur.fetchall()]
    conn.close()
    return ids


def _wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the embedder killed during `imgsearch ingest` ----------------------------------------------


def test_embedder_killed_during_ingest_then_rerun_stores_exactly_every_image(
    postgres_dsn: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    for i in range(400):
        path = folder / f"class_{i % 8}" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(images.jpeg(i, (64, 48)))
    searcher, searcher_port = start_service("searcher", "--dsn", postgres_dsn)
    embedder, embedder_port = start_service("embedder", "--weights", "random", "--seed", "3")
    command = [
        sys.executable, "-m", "imgsearch.cli", "ingest", str(folder),
        "--embedder", f"127.0.0.1:{embedder_port}",
        "--searcher", f"127.0.0.1:{searcher_port}",
        "--collection", "embedder_killed",
        "--timeout", "20",
    ]  # fmt: skip
    try:
        ingest = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_for(
            lambda: (
                _table_exists(postgres_dsn, "embedder_killed")
                and _count(postgres_dsn, "embedder_killed") > 0
            ),
            120,
            "the first rows",
        )
        embedder.send_signal(signal.SIGKILL)
        end_process(embedder)
        out, err = ingest.communicate(timeout=120)
        stored_when_killed = _count(postgres_dsn, "embedder_killed")
        assert ingest.returncode != 0, out
        assert f"cannot reach the embedder at 127.0.0.1:{embedder_port}" in err, err
        assert "run the same ingest again" in err, err
        assert "run the same ingest again to resume" in err
        assert 0 < stored_when_killed < 400

        embedder, embedder_port = start_service("embedder", "--weights", "random", "--seed", "3")
        command[command.index("--embedder") + 1] = f"127.0.0.1:{embedder_port}"
        rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert f"skipped {stored_when_killed} already stored" in rerun.stdout
    finally:
        end_process(embedder)
        end_process(searcher)
    expected = sorted(stable_id(path) for path in image_files([str(folder)]))
    assert len(set(expected)) == 400
    assert _ids(postgres_dsn, "embedder_killed") == expected  # no duplicate, none missing


def _table_exists(dsn: str, collection: str) -> bool:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'imgsearch_data."{collection}"',))
        (exists,) = cur.fetchone()
    conn.close()
    return bool(exists)


# -- the searcher killed during an Upsert stream ------------------------------------------------


def test_searcher_killed_during_upsert_leaves_whole_messages_and_a_rerun_completes(
    postgres_dsn: str,
) -> None:
    per_message, messages = 1000, 30
    data = np.random.default_rng(7).random((per_message * messages, 64), dtype=np.float32)
    searcher, port = start_service("searcher", "--dsn", postgres_dsn)
    try:
        channel, stub = searcher_stub(port)
        with channel:
            stub.CreateCollection(spb.CreateCollectionRequest(name="killed", dim=64), timeout=10)

            def paced() -> Iterator[spb.UpsertRequest]:
                # Paced so the stream outlasts the wait below on any machine; each message is
                # still written while the next is on its way, so the kill lands mid-write.
                for message in upsert_messages("killed", data, per_message=per_message):
                    yield message
                    time.sleep(0.05)

            stream = stub.Upsert.future(paced(), timeout=120)
            _wait_for(lambda: _count(postgres_dsn, "killed") >= 3 * per_message, 60, "3 messages")
            searcher.send_signal(signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as raised:
                stream.result()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        searcher.wait(timeout=30)
        time.sleep(1)  # the database notices the dead connection and rolls its transaction back
        stored = _count(postgres_dsn, "killed")
        assert stored % per_message == 0 and 0 < stored < per_message * messages, stored
    finally:
        end_process(searcher)

    searcher, port = start_service("searcher", "--dsn", postgres_dsn)
    try:
        channel, stub = searcher_stub(port)
        with channel:
            summary = stub.Upsert(
                upsert_messages("killed", data, per_message=per_message), timeout=300
            )
            assert summary.inserted_count == per_message * messages - stored
            assert summary.updated_count == stored
            assert _ids(postgres_dsn, "killed") == list(range(per_message * messages))
            stats = stub.GetStats(spb.GetStatsRequest(collection="killed"), timeout=30)
            assert stats.index_present  # the interrupted load's index was built by the re-run
            for probe in (0, 12_345, per_message * messages - 1):
                got = stub.Get(
                    spb.GetRequest(collection="killed", ids=[probe], include_vectors=True),
                    timeout=10,
                )
                np.testing.assert_array_equal(np.array(got.items[0].vector.values), data[probe])
            # Gone before the searcher is: its index is not yet measured, and every later
            # searcher on this shared database would take up that check (30k rows: over a
            # minute of upkeep on a slow machine, which held up the next tests' wait_idle).
            stub.DropCollection(spb.DropCollectionRequest(name="killed"), timeout=30)
    finally:
        end_process(searcher)


# -- PostgreSQL stopped and restarted under search load -----------------------------------------


@pytest.fixture()
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path / "pg") as server:
        yield server


def test_postgres_restart_under_search_load(own_postgres: EmbeddedPostgres) -> None:
    dsn = own_postgres.dsn
    searcher, port = start_service("searcher", "--dsn", dsn)
    outcomes: list[tuple[float, grpc.StatusCode]] = []
    acknowledged: list[int] = []
    stop = threading.Event()
    try:
        channel, stub = searcher_stub(port)
        with channel:
            stub.CreateCollection(spb.CreateCollectionRequest(name="restart", dim=8), timeout=10)
            data = np.random.default_rng(1).random((500, 8), dtype=np.float32)
            stub.Upsert(upsert_messages("restart", data, per_message=100), timeout=60)

            def search_load() -> None:
                while not stop.is_set():
                    request = spb.SearchRequest(
                        collection="restart", vector=vector(data[3]), top_k=5
                    )
                    try:
                        hits = stub.Search(request, timeout=10).hits
                        assert hits[0].id == 3
                        outcomes.append((time.monotonic(), grpc.StatusCode.OK))
                    except grpc.RpcError as exc:
                        outcomes.append((time.monotonic(), exc.code()))
                        time.sleep(0.02)

            def write_load() -> None:
                next_id = 1000
                while not stop.is_set():
                    item = spb.Item(id=next_id, vector=vector(np.full(8, 0.5, dtype=np.float32)))
                    try:
                        stub.Upsert(
                            iter([spb.UpsertRequest(collection="restart", items=[item])]),
                            timeout=10,
                        )
                        acknowledged.append(next_id)
                    except grpc.RpcError:
                        pass
                    next_id += 1
                    time.sleep(0.01)

            workers = [threading.Thread(target=search_load) for _ in range(3)]
            workers.append(threading.Thread(target=write_load))
            for worker in workers:
                worker.start()
            time.sleep(1.5)
            down = time.monotonic()
            own_postgres.pg_ctl("stop", "-m", "fast")
            time.sleep(2.0)
            start_again(own_postgres)
            up = time.monotonic()
            _wait_for(
                lambda: outcomes[-1][1] == grpc.StatusCode.OK, 30, "searches to succeed again"
            )
            recovered = time.monotonic()
            time.sleep(1.5)
            stop.set()
            for worker in workers:
                worker.join(30)
    finally:
        stop.set()
        end_process(searcher)

    before = [code for t, code in outcomes if t < down]
    during = [code for t, code in outcomes if down <= t <= recovered]
    after = [code for t, code in outcomes if t > recovered + 0.5]
    assert before and set(before) == {grpc.StatusCode.OK}
    assert set(during) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(during)
    assert grpc.StatusCode.UNAVAILABLE in during  # the outage was seen, and said so
    assert after and set(after) == {grpc.StatusCode.OK}  # it resumed by itself
    assert recovered - up < 10
    stored = set(_ids(dsn, "restart"))
    assert set(range(500)) <= stored
    assert set(acknowledged) <= stored  # no acknowledged write was lost


# -- SIGTERM under load -------------------------------------------------------------------------


def test_searcher_sigterm_finishes_an_open_upsert_stream_refuses_new_calls_and_exits(
    postgres_dsn: str,
) -> None:
    searcher, port = start_service("searcher", "--dsn", postgres_dsn, "--grace-s", "20")
    sent = threading.Event()
    try:
        channel, stub = searcher_stub(port)
        with channel:
            stub.CreateCollection(spb.CreateCollectionRequest(name="draining", dim=4), timeout=10)
            data = np.random.default_rng(2).random((20, 4), dtype=np.float32)

            def slow_messages() -> Iterator[spb.UpsertRequest]:
                for i, message in enumerate(upsert_messages("draining", data, per_message=2)):
                    yield message
                    if i == 2:
                        sent.set()
                    time.sleep(0.3)  # the stream lasts ~3 s, well into the shutdown

            stream = stub.Upsert.future(slow_messages(), timeout=60)
            assert sent.wait(30)
            terminated = time.monotonic()
            searcher.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            new_channel, new_stub = searcher_stub(port)
            with new_channel, pytest.raises(grpc.RpcError) as refused:
                new_stub.ListCollections(spb.ListCollectionsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            summary = stream.result()  # the stream in flight finished, every message stored
            assert (summary.inserted_count, summary.message_count) == (20, 10)
        assert searcher.wait(timeout=30) == 0
        assert time.monotonic() - terminated < 20
    finally:
        end_process(searcher)
    assert _ids(postgres_dsn, "draining") == list(range(20))
