"""Saved weights, a running embedder, and the tutorial's reference pipeline for the tests."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
import torchvision
from PIL import Image

from embedder.batcher import Batcher, BatcherConfig, Forward
from embedder.model import reference_transform
from embedder.preprocessing import Prepare, preprocess
from imgsearch import vectors
from imgsearch.v1 import embedder_pb2 as pb
from imgsearch.v1 import embedder_pb2_grpc


def save_random_weights(path: Path, seed: int, name: str = "squeezenet1_1") -> Path:
    """A state_dict of `name` initialised from `seed`, saved the way torchvision's are."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def reference_vectors(
    weights: Path, images: list[bytes], name: str = "squeezenet1_1"
) -> np.ndarray:
    """The source tutorial's pipeline: PIL → Compose → eager torch model (NCHW), batch of all."""
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    transform = reference_transform()
    batch = torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in images])
    with torch.no_grad():
        return np.asarray(model(batch).numpy(), dtype=np.float32)


def embedder_stub(port: int) -> tuple[grpc.Channel, embedder_pb2_grpc.EmbedderServiceStub]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    return channel, embedder_pb2_grpc.EmbedderServiceStub(channel)


def embed(stub: embedder_pb2_grpc.EmbedderServiceStub, images: list[bytes]) -> list[pb.EmbedResult]:
    request = pb.EmbedRequest(images=[pb.Image(key=str(i), data=d) for i, d in enumerate(images)])
    return list(stub.Embed(request, timeout=120).results)


def vector_of(result: pb.EmbedResult) -> np.ndarray:
    assert result.WhichOneof("outcome") == "vector", result.error.message
    return vectors.from_proto(result.vector)


def relative_error(v: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(v - ref) / np.linalg.norm(ref))


def run_batcher(
    forward: Forward,
    config: BatcherConfig,
    body: Callable[[Batcher], Awaitable[Any]],
    prepare: Prepare = preprocess,
) -> Any:
    """Run `body(batcher)` on a fresh event loop with a started batcher."""

    async def main() -> Any:
        batcher = Batcher(forward, config, prepare=prepare)
        await batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait on the event loop until `condition()` holds (failing after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)
