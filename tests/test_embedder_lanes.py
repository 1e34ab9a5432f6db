"""Lanes: a search's image overtakes an import's queued images, in decoding and in batches; the
import is never starved; callers choose a lane through gRPC, with defaults by call shape."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from embedder.batcher import Batcher, BatcherConfig
from embedder.config import EmbedderConfig, ForwardPlan, parse_config
from embedder.lanes import Lane, LaneQueue
from embedder.server import Embedder
from imgsearch.errors import ConfigError
from imgsearch.v1 import embedder_pb2 as pb
from tests import images
from tests.embedder_helpers import embedder_stub, run_batcher, save_random_weights, until

INTERACTIVE, BULK = Lane.INTERACTIVE, Lane.BULK


class GatedModel:
    """A model whose work is seen and held: each image's tensor is its width (its name in these
    tests: bulk images under 300, interactive ones from 300), each batch's widths are recorded in
    order, and decoding, or the forward pass of a bulk batch, waits while its gate is closed."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.decoded: list[int] = []
        self.forward_calls = 0  # batches handed to the model, held at the gate or not
        self.forward_gate = threading.Event()
        self.decode_gate = threading.Event()
        self.forward_gate.set()
        self.decode_gate.set()

    def prepare(self, image: Image.Image) -> np.ndarray:
        assert self.decode_gate.wait(30)
        self.decoded.append(image.width)
        return np.array([float(image.width)], np.float32)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        self.forward_calls += 1
        widths = [int(w) for w in batch[:, 0]]
        if widths[0] < 300:
            assert self.forward_gate.wait(30)
        self.batches.append(widths)
        return batch


def picture(width: int) -> bytes:
    return images.jpeg(width, (width, 40))


def run(model: GatedModel, config: BatcherConfig, body: Any) -> Any:
    return run_batcher(model.forward, config, body, prepare=model.prepare)


def test_the_turn_rule_serves_interactive_first_and_bulk_every_few_turns() -> None:
    async def body() -> list[str]:
        lanes: LaneQueue[str] = LaneQueue(max_interactive_run=2)
        for i in range(3):
            lanes.put(f"b{i}", BULK)
        for i in range(5):
            lanes.put(f"i{i}", INTERACTIVE)
        return [lanes.take_next()[0] for _ in range(8)]

    assert asyncio.run(body()) == ["i0", "i1", "b0", "i2", "i3", "b1", "i4", "b2"]


def test_an_interactive_image_runs_while_a_bulk_batch_holds_the_model_and_others_wait() -> None:
    model = GatedModel()
    config = BatcherConfig(max_batch_size=4, max_delay_ms=500, decode_workers=1)

    async def body(batcher: Batcher) -> list[list[int]]:
        model.forward_gate.clear()
        bulk = asyncio.ensure_future(
            batcher.embed_many([picture(100 + i) for i in range(12)], lane=BULK)
        )
        # One bulk batch is in the model (held), the next is formed behind it; 4 wait.
        await until(lambda: model.forward_calls == 1 and batcher.queue_depth == 4)
        vector = await batcher.embed(picture(300), lane=INTERACTIVE)
        assert vector.tolist() == [300.0]
        answered = list(model.batches)
        model.forward_gate.set()
        await bulk
        return answered

    assert run(model, config, body) == [[300]]


def test_an_interactive_image_is_decoded_before_bulk_images_waiting_to_be() -> None:
    model = GatedModel()
    config = BatcherConfig(max_batch_size=8, max_delay_ms=5, decode_workers=1)

    async def body(batcher: Batcher) -> list[int]:
        model.decode_gate.clear()
        bulk = asyncio.ensure_future(
            batcher.embed_many([picture(100 + i) for i in range(6)], lane=BULK)
        )
        # The one decoding thread holds the first bulk image; five wait for it.
        await until(lambda: batcher.lane_waiting(BULK) == (5, 0))
        search = asyncio.ensure_future(batcher.embed(picture(300), lane=INTERACTIVE))
        await until(lambda: batcher.lane_waiting(INTERACTIVE) == (1, 0))
        model.decode_gate.set()
        await asyncio.gather(search, bulk)
        return model.decoded

    assert run(model, config, body) == [100, 300, 101, 102, 103, 104, 105]


def test_bulk_keeps_its_own_batches_under_a_steady_interactive_load() -> None:
    model = GatedModel()
    config = BatcherConfig(max_batch_size=1, max_delay_ms=1)

    async def body(batcher: Batcher) -> list[list[int]]:
        stop = asyncio.Event()

        async def searcher(first: int) -> None:
            n = first
            while not stop.is_set():  # always a search waiting, or in the model
                await batcher.embed(picture(n), lane=INTERACTIVE)
                n += 2

        searchers = [asyncio.ensure_future(searcher(300 + i)) for i in range(2)]
        await until(lambda: batcher.stats.lane_images[INTERACTIVE] >= 10)
        await batcher.embed_many([picture(100 + i) for i in range(10)], lane=BULK)
        stop.set()
        await asyncio.gather(*searchers)
        return model.batches

    batches = run(model, config, body)
    bulk = [batch[0] for batch in batches if batch[0] < 300]
    assert sorted(bulk) == list(range(100, 110))


def test_a_bulk_batch_being_filled_gives_its_turn_to_an_arriving_interactive_image() -> None:
    model = GatedModel()
    # A long fill window: the bulk batch still waits for company when the search's image comes.
    config = BatcherConfig(max_batch_size=8, max_delay_ms=1000, decode_workers=1)

    async def body(batcher: Batcher) -> list[list[int]]:
        bulk = asyncio.ensure_future(
            batcher.embed_many([picture(100 + i) for i in range(3)], lane=BULK)
        )
        # All three decoded and taken into the bulk batch, which waits to fill.
        await until(lambda: len(model.decoded) == 3 and batcher.lane_waiting(BULK) == (0, 0))
        vector = await batcher.embed(picture(300), lane=INTERACTIVE)
        assert vector.tolist() == [300.0]
        await bulk
        return model.batches

    assert run(model, config, body) == [[300], [100, 101, 102]]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_lane_runs_as_many_batches_at_once_as_it_has_forward_workers(workers: int) -> None:
    model = GatedModel()
    config = BatcherConfig(
        max_batch_size=4, max_delay_ms=5, forward_workers=workers, batches_ahead=0
    )

    async def body(batcher: Batcher) -> tuple[int, list[list[int]]]:
        model.forward_gate.clear()
        bulk = asyncio.ensure_future(
            batcher.embed_many([picture(100 + i) for i in range(12)], lane=BULK)
        )
        await until(
            lambda: model.forward_calls == workers and batcher.queue_depth == 12 - 4 * workers
        )
        await asyncio.sleep(0.05)  # no further batch starts while those hold the model
        held = model.forward_calls
        model.forward_gate.set()
        await bulk
        return held, model.batches

    held, batches = run(model, config, body)
    assert held == workers
    assert sorted(width for batch in batches for width in batch) == list(range(100, 112))
    assert all(len(batch) == 4 for batch in batches)


@pytest.mark.parametrize(("ahead", "left_waiting"), [(0, 7), (1, 3), (2, 3)])
def test_full_batches_are_formed_ahead_while_the_model_is_busy_and_partial_ones_are_not(
    ahead: int, left_waiting: int
) -> None:
    model = GatedModel()
    config = BatcherConfig(max_batch_size=4, max_delay_ms=5, batches_ahead=ahead)

    async def body(batcher: Batcher) -> tuple[int, int, list[list[int]]]:
        model.forward_gate.clear()
        bulk = asyncio.ensure_future(
            batcher.embed_many([picture(100 + i) for i in range(11)], lane=BULK)
        )
        await until(lambda: model.forward_calls == 1 and batcher.queue_depth == left_waiting)
        await asyncio.sleep(0.05)  # the 3 left over never make a batch while the model is held
        held = (model.forward_calls, batcher.queue_depth)
        model.forward_gate.set()
        await bulk
        return *held, model.batches

    calls, waiting, batches = run(model, config, body)
    assert (calls, waiting) == (1, left_waiting)
    assert [len(batch) for batch in batches] == [4, 4, 3]
    assert sorted(width for batch in batches for width in batch) == list(range(100, 111))


def test_one_pass_at_a_time_unless_forward_workers_share_the_cores() -> None:
    assert EmbedderConfig().forward_plan("cpu") == ForwardPlan(1, 0)  # the runtime's threads
    assert EmbedderConfig(threads=4).forward_plan("cpu") == ForwardPlan(1, 4)
    assert EmbedderConfig(threads=4, forward_workers=2).forward_plan("cpu") == ForwardPlan(2, 2)
    cores = len(os.sched_getaffinity(0))
    assert EmbedderConfig(forward_workers=2).forward_plan("cpu") == ForwardPlan(
        2, max(1, cores // 2)
    )
    # More workers than threads: each still gets one.
    assert EmbedderConfig(threads=2, forward_workers=3).forward_plan("cpu") == ForwardPlan(3, 1)
    # A GPU runs the passes it is given; the CPU threads are not split.
    assert EmbedderConfig(threads=4, forward_workers=2).forward_plan("cuda") == ForwardPlan(2, 4)
    config = EmbedderConfig(threads=4, forward_workers=4)
    assert config.batcher_config("cpu").forward_workers == 4
    assert config.model_spec("cpu").threads == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--forward-workers", "0"], "--forward-workers (IMGSEARCH_EMBEDDER_FORWARD_WORKERS) must"),
        (
            ["--decode-workers", "0"],
            "--decode-workers (IMGSEARCH_EMBEDDER_DECODE_WORKERS) must be ",
        ),
        (["--max-batch-size", "-1"], "must be 0 (the default choice) or more, not -1"),
        (["--threads", "-2"], "--threads (IMGSEARCH_EMBEDDER_THREADS) must be 0 (the default"),
        (["--batches-ahead", "-1"], "--batches-ahead (IMGSEARCH_EMBEDDER_BATCHES_AHEAD) must be 0"),
    ],
)
def test_counts_that_cannot_work_are_refused_at_start_with_the_flag_named(flags, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(flags, environ={})


def test_queue_wait_batches_and_images_are_counted_per_lane() -> None:
    model = GatedModel()

    async def body(batcher: Batcher) -> Any:
        await batcher.embed_many([picture(100 + i) for i in range(3)], lane=BULK)
        await batcher.embed(picture(300), lane=INTERACTIVE)
        return batcher.stats

    stats = run(model, BatcherConfig(max_batch_size=8, max_delay_ms=5), body)
    assert stats.lane_images == {BULK: 3, INTERACTIVE: 1}
    assert stats.lane_batches[INTERACTIVE] == 1 and stats.lane_batches[BULK] >= 1
    assert stats.queue_wait[BULK].total == 3 and stats.queue_wait[INTERACTIVE].total == 1
    assert stats.queue_wait[INTERACTIVE].sum_s > 0


# -- through gRPC, with the real model ---------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    weights = save_random_weights(tmp_path_factory.mktemp("weights") / "w.pth", seed=3)
    config = EmbedderConfig(address="127.0.0.1:0", weights=str(weights), device="cpu")
    with Embedder(config) as server:
        yield server


def lane_images(embedder: Embedder) -> dict[Lane, int]:
    return dict(embedder.batcher.stats.lane_images)


def counted(embedder: Embedder, call: Any) -> dict[Lane, int]:
    """The images each lane embedded during `call()`."""
    before = lane_images(embedder)
    call()
    after = lane_images(embedder)
    return {lane: after.get(lane, 0) - before.get(lane, 0) for lane in Lane}


def test_callers_choose_a_lane_and_the_defaults_follow_the_calls_shape(embedder) -> None:
    channel, stub = embedder_stub(embedder.port)
    batch = embedder.batcher.config.max_batch_size
    few = [pb.Image(key=str(i), data=images.jpeg(i)) for i in range(2)]
    many = [pb.Image(key=str(i), data=images.jpeg(i)) for i in range(batch + 1)]
    with channel:
        assert counted(embedder, lambda: stub.Embed(pb.EmbedRequest(images=few))) == {
            INTERACTIVE: 2,
            BULK: 0,
        }
        assert counted(embedder, lambda: stub.Embed(pb.EmbedRequest(images=many))) == {
            INTERACTIVE: 0,
            BULK: batch + 1,
        }
        bulk = pb.EmbedRequest(images=few, priority=pb.PRIORITY_BULK)
        assert counted(embedder, lambda: stub.Embed(bulk)) == {INTERACTIVE: 0, BULK: 2}
        messages = [
            pb.EmbedStreamRequest(images=few),
            pb.EmbedStreamRequest(images=few, priority=pb.PRIORITY_INTERACTIVE),
        ]
        assert counted(embedder, lambda: list(stub.EmbedStream(iter(messages)))) == {
            INTERACTIVE: 2,
            BULK: 2,
        }


def test_a_search_returns_while_an_import_stream_is_still_being_embedded(embedder) -> None:
    channel, stub = embedder_stub(embedder.port)
    photos = [images.jpeg(i, (500, 375)) for i in range(8)]
    messages = [
        pb.EmbedStreamRequest(
            images=[pb.Image(key=f"{m}-{i}", data=d) for i, d in enumerate(photos)]
        )
        for m in range(24)
    ]
    finished: dict[str, float] = {}
    with channel:

        def stream() -> None:
            for _ in stub.EmbedStream(iter(messages)):
                pass
            finished["import"] = time.monotonic()

        before = lane_images(embedder).get(BULK, 0)
        importer = threading.Thread(target=stream)
        importer.start()
        deadline = time.monotonic() + 30
        while lane_images(embedder).get(BULK, 0) < before + 8:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        result = stub.Embed(pb.EmbedRequest(images=[pb.Image(key="q", data=photos[0])]))
        finished["search"] = time.monotonic()
        importer.join(60)
    assert result.results[0].HasField("vector")
    assert finished["search"] < finished["import"]
