"""The ingest's Upsert writer gives up cleanly: when the searcher stays away through every
replay, close() raises UNAVAILABLE's error instead of waiting forever."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest

from imgsearch._upsert import UpsertWriter
from imgsearch.errors import Unavailable
from imgsearch.v1 import searcher_pb2, searcher_pb2_grpc


def _port_nobody_listens_on() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("messages", [1, 3, 10])
def test_a_searcher_that_never_answers_ends_the_writer_with_unavailable(messages: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_port_nobody_listens_on()}") as channel:
        writer = UpsertWriter(
            searcher_pb2_grpc.SearcherServiceStub(channel).Upsert,
            timeout_s=2,
            attempts=3,
            initial_backoff_s=0.01,
        )
        outcome: list[BaseException | None] = []

        def produce_and_close() -> None:
            for _ in range(messages):
                writer.put(searcher_pb2.UpsertRequest(collection="images"))
            try:
                writer.close()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        producer = threading.Thread(target=produce_and_close, daemon=True)
        producer.start()
        producer.join(timeout=60)
        assert not producer.is_alive(), "close() hung after the last replay failed"
    (error,) = outcome
    assert isinstance(error, Unavailable), error
