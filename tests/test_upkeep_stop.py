"""Stopping the searcher does not wait for its index upkeep: a statement in progress is cancelled,
and queued tasks are left for the next start, which finds them again (a BINARY quantizer that
its collection outgrew included). (A searcher starting on a
database of many collections queues a check and a fold for each; a SIGTERM used to wait for all
of them, past the service's grace period.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgsearch.errors import DeadlineExceeded
from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.server import Searcher
from tests.searcher_helpers import clustered_vectors, searcher_on, searcher_stub, upsert_messages

LONG_STATEMENT_S = 60  # what the upkeep's task would take if it were waited for


@pytest.fixture()
def searcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Searcher]:
    with searcher_on("pg18-embedded", request, tmp_path_factory) as running:
        yield running


def test_a_thread_s_running_statement_is_cancelled_and_its_connection_stays_usable(
    searcher: Searcher,
) -> None:
    assert searcher.store is not None
    pool = searcher.store.pool
    outcome: list[BaseException] = []
    running = threading.Event()

    def long_statement() -> None:
        try:
            with pool.connection(bulk=True) as conn, conn.cursor() as cur:
                running.set()
                cur.execute("SELECT pg_sleep(%s)", (LONG_STATEMENT_S,))
        except BaseException as exc:  # noqa: BLE001 - what the holder saw is the point
            outcome.append(exc)

    worker = threading.Thread(target=long_statement)
    worker.start()
    assert running.wait(30)
    assert worker.ident is not None
    asked = 0
    while worker.is_alive():  # the statement may not have reached the server yet: ask again
        asked += pool.cancel_statements_of(worker.ident)
        worker.join(0.5)
    assert asked >= 1
    assert len(outcome) == 1 and isinstance(outcome[0], DeadlineExceeded)
    assert pool.cancel_statements_of(worker.ident) == 0  # it holds nothing any more
    with pool.connection(bulk=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_stopping_cancels_the_task_in_progress_and_leaves_queued_ones(
    searcher: Searcher, caplog: pytest.LogCaptureFixture
) -> None:
    assert searcher.store is not None
    maintenance = searcher.store.maintenance
    assert maintenance.wait_idle(120)
    started = threading.Event()
    checked: list[str] = []

    def long_fold(name: str) -> None:
        # The upkeep's own work, made long: a real statement on the upkeep's bulk connection.
        with maintenance.pool.connection(bulk=True) as conn, conn.cursor() as cur:
            started.set()
            cur.execute("SELECT pg_sleep(%s)", (LONG_STATEMENT_S,))

    maintenance.fold = long_fold  # type: ignore[method-assign]
    maintenance.check = lambda name, **_: checked.append(name)  # type: ignore[method-assign]
    maintenance.schedule("fold", "a")
    for name in ("b", "c", "d"):
        maintenance.schedule("check", name)
    assert started.wait(30)

    caplog.set_level(logging.INFO, logger="searcher.maintenance")
    stopping = time.monotonic()
    maintenance.stop(patience_s=0.5)
    assert time.monotonic() - stopping < 15
    assert checked == []
    assert "its statement in progress is cancelled" in caplog.text
    assert "stopped with 3 queued tasks left for the next start" in caplog.text


def test_a_quantizer_refit_left_queued_at_stop_is_done_at_the_next_start(tmp_path: Path) -> None:
    data = clustered_vectors(2100, seed=13)
    with EmbeddedPostgres(tmp_path / "pg") as postgres:
        config = SearcherConfig(address="127.0.0.1:0", dsn=postgres.dsn)
        with Searcher(config) as searcher:
            assert searcher.store is not None
            channel, stub = searcher_stub(searcher.port)
            with channel:
                stub.CreateCollection(
                    pb.CreateCollectionRequest(
                        name="photos",
                        dim=1000,
                        index_params=pb.IndexParams(kind=pb.INDEX_KIND_BINARY),
                    )
                )
                stub.Upsert(upsert_messages("photos", data[:1000]))
                assert searcher.store.maintenance.wait_idle(300)
                stub.Upsert(upsert_messages("photos", data[1000:1900], first_id=1000))
                assert searcher.store.maintenance.wait_idle(300)  # folded in: 1.9x, kept
                # The upkeep stops (as on SIGTERM); 2.1x asks for a refit, which stays queued.
                searcher.store.maintenance.stop()
                stub.Upsert(upsert_messages("photos", data[1900:], first_id=1900))
                index = stub.GetCollection(pb.GetCollectionRequest(name="photos")).collection.index
                assert (index.quantizer_rows, index.generation) == (1000, 2)
        with Searcher(config) as searcher:
            assert searcher.store is not None and searcher.store.maintenance.wait_idle(300)
            channel, stub = searcher_stub(searcher.port)
            with channel:
                index = stub.GetCollection(pb.GetCollectionRequest(name="photos")).collection.index
    assert (index.quantizer_rows, index.generation) == (2100, 3)
    assert index.note.startswith("quantizer refitted on 2100 rows (it was fitted on 1000); ")
