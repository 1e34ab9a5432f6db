"""Loading a searcher's collection through its RPCs in the benchmarks: the Upsert stream, and
waiting for the upkeep's check to record the calibrated effort."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from imgsearch.v1 import searcher_pb2 as pb
from tests.searcher_helpers import searcher_stub, vector


def upsert_all(
    port: int,
    name: str,
    data: np.ndarray,
    first_id: int = 0,
    per: int = 1000,
    announce: bool = True,
) -> Any:
    """One Upsert stream of `data`; `announce`: its first message says how many items it
    writes (expected_item_count), as a bulk-ingest job that knows would."""

    def messages() -> Iterator[pb.UpsertRequest]:
        for start in range(0, len(data), per):
            stop = min(start + per, len(data))
            yield pb.UpsertRequest(
                collection=name,
                expected_item_count=len(data) if announce and start == 0 else 0,
                items=[
                    pb.Item(id=first_id + i, vector=vector(data[i])) for i in range(start, stop)
                ],
            )

    channel, stub = searcher_stub(port)
    with channel:
        return stub.Upsert(messages(), timeout=7200)


def wait_for_upkeep(port: int, name: str, timeout_s: float = 3600) -> pb.Collection:
    """The collection once its build's recall check has recorded the calibrated effort."""
    channel, stub = searcher_stub(port)
    deadline = time.monotonic() + timeout_s
    with channel:
        while time.monotonic() < deadline:
            collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
            if collection.index.HasField("recall"):
                return collection
            time.sleep(0.5)
    raise TimeoutError(f"no recall recorded for {name} in {timeout_s} s")


def loaded_collection(port: int, name: str, data: np.ndarray) -> pb.Collection:
    """A new collection of the server's default kind holding `data` (ids from 0), once its
    build's recall check has recorded the calibrated effort."""
    channel, stub = searcher_stub(port)
    with channel:
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=data.shape[1]))
    upsert_all(port, name, data)
    return wait_for_upkeep(port, name)
