"""The searcher's lifecycle against a real database: concurrent start-up, outages, recovery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgsearch.v1 import searcher_pb2 as pb
from searcher.config import SearcherConfig
from searcher.embedded import EmbeddedPostgres
from searcher.server import Searcher
from tests.searcher_helpers import clustered_vectors, searcher_stub, upsert_messages, vector


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path / "data") as server:
        yield server


def _health(port: int) -> int:
    channel, _ = searcher_stub(port)
    with channel:
        request = health_pb2.HealthCheckRequest(service="imgsearch.v1.SearcherService")
        status: int = health_pb2_grpc.HealthStub(channel).Check(request).status
        return status


def _wait_for_health(port: int, status: int, timeout_s: float = 20.0) -> None:
    channel, _ = searcher_stub(port)
    with channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="imgsearch.v1.SearcherService"),
            timeout=timeout_s,
        )
        for response in watch:
            if response.status == status:
                watch.cancel()
                return


def test_two_searchers_started_at_once_on_an_empty_database_both_serve(database) -> None:
    config = SearcherConfig(address="127.0.0.1:0", dsn=database.dsn)
    searchers = [Searcher(config), Searcher(config)]
    errors: list[BaseException] = []

    def start(searcher: Searcher) -> None:
        try:
            searcher.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in searchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        for searcher in searchers:
            assert _health(searcher.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for searcher in searchers:
            searcher.stop(grace_s=1)


def test_a_database_outage_means_not_serving_and_unavailable_then_recovers_alone(
    database, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = SearcherConfig(address="127.0.0.1:0", dsn=database.dsn)
    with Searcher(config) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            stub.CreateCollection(pb.CreateCollectionRequest(name="kept", dim=2))
            stub.Upsert(
                iter(
                    [
                        pb.UpsertRequest(
                            collection="kept", items=[pb.Item(id=1, vector=vector([1, 2]))]
                        )
                    ]
                )
            )
            database.pg_ctl("-m", "fast", "stop")
            try:
                _wait_for_health(searcher.port, health_pb2.HealthCheckResponse.NOT_SERVING)
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Search(pb.SearchRequest(collection="kept", vector=vector([1, 2]), top_k=1))
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "database unavailable" in raised.value.details()
            finally:
                database.pg_ctl(
                    "-o",
                    '-h ""',
                    "-o",
                    f"-k {data_dir}",
                    "-l",
                    str(data_dir / "log"),
                    "start",
                )
            _wait_for_health(searcher.port, health_pb2.HealthCheckResponse.SERVING)
            hits = stub.Search(
                pb.SearchRequest(collection="kept", vector=vector([1, 2]), top_k=1)
            ).hits
            assert [h.id for h in hits] == [1]


def test_a_deferred_index_build_is_not_cut_short_by_the_statement_timeout(database) -> None:
    # Requests are bounded by the statement timeout; a bulk load's index build grows with the
    # data and must finish however long it takes (100k rows take over a minute here).
    # The limit is short next to the build, not next to a request: at 50 ms, a COPY of 500
    # rows of 1000-d once ran past it on a slow machine (CI, stop 43).
    timeout_ms = 250
    config = SearcherConfig(
        address="127.0.0.1:0", dsn=database.dsn, statement_timeout_ms=timeout_ms
    )
    data = clustered_vectors(3000, seed=5)
    with Searcher(config) as searcher:
        channel, stub = searcher_stub(searcher.port)
        with channel:
            stub.CreateCollection(pb.CreateCollectionRequest(name="slow_build", dim=1000))
            summary = stub.Upsert(upsert_messages("slow_build", data, per_message=100))
            assert summary.inserted_count == 3000
            # The catalogue's word (GetStats counts the rows: a request of its own that a busy
            # machine may take past the limit, which is not what this test is about).
            index = stub.GetCollection(pb.GetCollectionRequest(name="slow_build")).collection.index
            assert index.generation >= 1 and index.built_rows == 3000
            assert index.build_seconds * 1000 > timeout_ms  # the build outlasted the limit
