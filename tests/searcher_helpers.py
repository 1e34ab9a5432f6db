"""Data and client helpers for the searcher tests and benchmarks."""

from __future__ import annotations

import contextlib
import itertools
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from imgsearch import vectors
from imgsearch.v1 import searcher_pb2 as pb
from imgsearch.v1 import searcher_pb2_grpc, vector_pb2
from searcher.embedded import EmbeddedPostgres


def clustered_vectors(n: int, dim: int = 1000, clusters: int = 100, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture shaped like CNN features: non-negative, skewed cluster centres, and
    within each cluster variation along a few directions of its own (a low intrinsic dimension)
    plus a little isotropic noise. Isotropic noise alone, in 1000-d, makes every point of a
    cluster nearly equidistant from every other: harder than any real feature set."""
    rng = np.random.default_rng(seed)
    # The structure depends only on `clusters` and `dim`, so different seeds draw new points
    # from the same mixture (queries and data must come from one distribution).
    structure = np.random.default_rng(12345)
    centres = structure.gamma(shape=1.0, scale=1.0, size=(clusters, dim)).astype(np.float32)
    directions = structure.normal(size=(clusters, 16, dim)).astype(np.float32) / np.sqrt(dim)
    assignment = rng.integers(0, clusters, size=n)
    along = rng.normal(scale=8.0, size=(n, 16)).astype(np.float32)
    within = np.einsum("nk,nkd->nd", along, directions[assignment])
    noise = rng.normal(scale=0.1, size=(n, dim)).astype(np.float32)
    return np.asarray(centres[assignment] + within + noise, dtype=np.float32)


def exact_neighbours(data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    distances = np.linalg.norm(data.astype(np.float64) - query.astype(np.float64), axis=1)
    return np.argsort(distances, kind="stable")[:k]


def vector(values: np.ndarray) -> vector_pb2.Vector:
    return vectors.to_proto(values)


def upsert_messages(
    collection: str,
    data: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    first_id: int = 0,
    per_message: int = 1000,
    expected_items: int = 0,
) -> Iterator[pb.UpsertRequest]:
    """An Upsert stream of `data` (ids from first_id); `expected_items`: the count its first
    message announces (UpsertRequest.expected_item_count)."""
    for start in range(0, len(data), per_message):
        stop = min(start + per_message, len(data))
        yield pb.UpsertRequest(
            collection=collection,
            expected_item_count=expected_items if start == 0 else 0,
            items=[
                pb.Item(
                    id=first_id + i,
                    label=labels[i] if labels is not None else "",
                    vector=vector(data[i]),
                )
                for i in range(start, stop)
            ],
        )


def searcher_stub(port: int) -> tuple[grpc.Channel, searcher_pb2_grpc.SearcherServiceStub]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    return channel, searcher_pb2_grpc.SearcherServiceStub(channel)


# The two engines the searcher is tested on: its own embedded PostgreSQL 18 + pgvector 0.8.5,
# and the old embedded engine's PostgreSQL 16 + pgvector 0.6.2 reached by DSN.
ENGINES = ["pg18-embedded", "pgvector06-dsn"]


@contextlib.contextmanager
def searcher_on(engine: str, request: Any, tmp_path_factory: Any, **settings: Any) -> Iterator[Any]:
    """A running Searcher (config `settings`) on one of ENGINES; `request` is the pytest
    fixture request, for the old engine's DSN fixture."""
    from searcher.config import SearcherConfig
    from searcher.server import Searcher

    if engine == "pg18-embedded":
        where = {"data_dir": str(tmp_path_factory.mktemp("searcher"))}
    else:
        where = {"dsn": request.getfixturevalue("old_engine_dsn")}
    with Searcher(SearcherConfig(address="127.0.0.1:0", **where, **settings)) as running:
        yield running


_names = itertools.count()


def new_collection(stub, dim: int = 1000, metric: int = pb.METRIC_L2, kind: int = 0) -> str:  # type: ignore[no-untyped-def]
    """A new collection of a fresh name."""
    name = f"t{next(_names)}_{np.random.default_rng().integers(1 << 30)}"
    params = pb.IndexParams(kind=kind)
    stub.CreateCollection(
        pb.CreateCollectionRequest(name=name, dim=dim, metric=metric, index_params=params)
    )
    return name


def rpc_error(call, *args) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        call(*args)
    return raised.value


def start_again(postgres: EmbeddedPostgres) -> None:
    """Start an embedded server that a test stopped by hand (pg_ctl stop), on its own Unix
    socket only, where the DSNs handed out before still point."""
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlparse(postgres.dsn).query)["host"][0]
    postgres.pg_ctl(
        "start",
        "-o",
        '-h ""',
        "-o",
        f"-k {socket_dir}",
        "-l",
        str(postgres.data_dir / "restart.log"),
    )


@dataclass(frozen=True)
class Labelled:
    """20k clustered rows of one index kind, labelled for filters: "class7" 1% of rows, "half"
    50%, "rare" 5 rows; and what their Upsert answered."""

    name: str
    data: np.ndarray
    labels: np.ndarray
    upserted: pb.UpsertResponse


def labelled_20k(stub, made: dict[int, Labelled], kind: int) -> Labelled:  # type: ignore[no-untyped-def]
    """The labelled 20k collection of this index kind: loaded on first use, then kept in
    `made` (one per searcher), since its load, build and check take 30-60 s."""
    if kind not in made:
        data = clustered_vectors(20_000, seed=4)
        labels = [f"class{i % 100}" if i % 2 else "half" for i in range(len(data))]
        for i in range(5):
            labels[i * 997] = "rare"
        name = new_collection(stub, kind=kind)
        upserted = stub.Upsert(upsert_messages(name, data, labels=labels))
        made[kind] = Labelled(name, data, np.array(labels), upserted)
    return made[kind]
