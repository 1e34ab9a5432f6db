"""The dynamic batcher with the real model: batches fill under load, a lone caller is not held,
results go back to the right caller, overload is refused, abandoned work is never computed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from embedder.batcher import Batcher, BatcherConfig
from embedder.decode import decode_image
from embedder.model import EmbeddingModel, ModelSpec
from embedder.preprocessing import preprocess
from imgsearch.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from tests import images
from tests.embedder_helpers import run_batcher, until


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel(ModelSpec(weights="random", seed=1, device="cpu"))


def run(model: EmbeddingModel, config: BatcherConfig, body: Any) -> Any:
    """Run `body(batcher)` on a fresh event loop with a started batcher."""
    return run_batcher(model.forward, config, body)


def test_32_concurrent_callers_share_batches_and_each_gets_its_own_vector(model) -> None:
    data = [images.jpeg(i, (96 + i, 80)) for i in range(32)]
    alone = model.forward(np.stack([preprocess(decode_image(d)) for d in data]))

    async def body(batcher: Batcher) -> tuple[list[np.ndarray], float]:
        results = await asyncio.gather(*(batcher.embed(d) for d in data))
        return results, batcher.stats.mean_batch_size

    results, mean_batch = run(model, BatcherConfig(max_batch_size=16, max_delay_ms=50), body)
    assert mean_batch >= 8
    for got, expected in zip(results, alone, strict=True):
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4


def _compute_seconds(batcher: Batcher) -> float:
    stats = batcher.stats
    return stats.decode_seconds + stats.preprocess_seconds + stats.forward_seconds


def test_a_lone_caller_waits_at_most_max_delay_plus_compute(model) -> None:
    data = images.jpeg(1)

    async def body(batcher: Batcher) -> tuple[float, float]:
        await batcher.embed(data)  # warm the thread pools
        before = _compute_seconds(batcher)
        started = time.perf_counter()
        await batcher.embed(data)
        elapsed = time.perf_counter() - started
        compute = _compute_seconds(batcher) - before
        return elapsed, compute

    elapsed, compute = run(model, BatcherConfig(max_batch_size=8, max_delay_ms=100), body)
    assert 0.1 <= elapsed <= 0.1 + compute + 0.1


def test_past_max_queue_images_callers_are_refused_at_once(model) -> None:
    data = images.jpeg(2, (96, 96))
    peak = 0

    async def body(batcher: Batcher) -> list[object]:
        nonlocal peak

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, batcher.in_flight)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.gather(
            *(batcher.embed_many([data, data]) for _ in range(10)), return_exceptions=True
        )
        watcher.cancel()
        return outcomes

    outcomes = run(model, BatcherConfig(max_queue_images=4, max_delay_ms=20), body)
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    served = [o for o in outcomes if isinstance(o, list)]
    assert len(refused) == 8 and len(served) == 2
    assert "max_queue_images=4" in str(refused[0])
    assert peak <= 4


def test_an_expired_image_is_dropped_before_compute(model) -> None:
    async def body(batcher: Batcher) -> tuple[object, int, int]:
        loop = asyncio.get_running_loop()
        outcome = await batcher.embed_many([images.jpeg(3)], deadline=loop.time() + 0.05)
        return outcome[0], batcher.stats.dropped_expired, batcher.stats.images

    outcome, expired, computed = run(model, BatcherConfig(max_delay_ms=300), body)
    assert isinstance(outcome, DeadlineExceeded)
    assert (expired, computed) == (1, 0)


def test_a_cancelled_caller_is_dropped_before_compute(model) -> None:
    async def body(batcher: Batcher) -> tuple[int, int]:
        task = asyncio.create_task(batcher.embed(images.jpeg(4)))
        await until(lambda: batcher.queue_depth == 1)
        task.cancel()
        await until(lambda: batcher.stats.dropped_cancelled == 1)
        return batcher.stats.images, batcher.in_flight

    assert run(model, BatcherConfig(max_delay_ms=300), body) == (0, 0)


def test_stopping_finishes_admitted_work_and_refuses_new_work(model) -> None:
    async def main() -> tuple[object, object]:
        batcher = Batcher(model.forward, BatcherConfig(max_delay_ms=100))
        await batcher.start()
        admitted = asyncio.create_task(batcher.embed(images.jpeg(5)))
        await until(lambda: batcher.in_flight == 1)
        stopping = asyncio.create_task(batcher.stop(grace_s=10))
        await asyncio.sleep(0)
        try:
            await batcher.embed(images.jpeg(6))
            late: object = "accepted"
        except Unavailable as exc:
            late = exc
        await stopping
        return await admitted, late

    vector, late = asyncio.run(main())
    assert isinstance(vector, np.ndarray) and vector.shape == (1000,)
    assert isinstance(late, Unavailable)
