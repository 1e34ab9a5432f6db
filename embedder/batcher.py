"""Dynamic batching: many callers, one model, batches formed on the fly. No gRPC here.

Callers hand in encoded images and await their vectors. Each image is decoded and preprocessed in
a thread pool first (so a bad image fails alone and decoding runs in parallel with the model),
then queued. One loop takes the queue's head, waits at most `max_delay_ms` after that image
arrived for the batch to fill up to `max_batch_size`, drops images whose caller has gone (cancelled
or past its deadline), and runs the forward pass in its own thread so the event loop stays free.
Admission is bounded: past `max_queue_images` in flight, callers get ResourceExhausted at once
rather than a queue that grows without end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from embedder.decode import DecodeLimits, decode_image
from embedder.model import preprocess
from imgsearch.errors import DeadlineExceeded, ImageSearchError, ResourceExhausted, Unavailable

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class BatcherConfig:
    # Measured on the 2-core CPUs (bench/embedder.py): batch 8 beats 16 and 32 (cache).
    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_queue_images: int = 512
    decode_workers: int = 2


@dataclass
class BatcherStats:
    """Counters for tests, benchmarks and (later) metrics export. Updated on the event loop."""

    images: int = 0
    batches: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    dropped_cancelled: int = 0
    dropped_expired: int = 0
    rejected_overload: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    decode_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    forward_seconds: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0


@dataclass
class _Pending:
    tensor: torch.Tensor
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float | None


class Batcher:
    def __init__(
        self,
        forward: Forward,
        config: BatcherConfig = BatcherConfig(),
        limits: DecodeLimits | None = None,
        prepare: Callable[[Image.Image], torch.Tensor] = preprocess,
    ) -> None:
        self.forward = forward
        self.prepare = prepare  # decoded picture -> the model's input tensor
        self.config = config
        self.limits = limits or DecodeLimits()
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._forward_pool: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._waiting = 0
        self._idle: asyncio.Event | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._decode_pool = ThreadPoolExecutor(
            self.config.decode_workers, thread_name_prefix="decode"
        )
        self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._closing = False
        self._loop_task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work, let admitted images finish (up to grace_s), then shut down."""
        self._closing = True
        if self._idle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for pool in (self._decode_pool, self._forward_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._loop_task = self._decode_pool = self._forward_pool = None

    @property
    def queue_depth(self) -> int:
        """Images decoded and waiting for the model (queued or in a batch being formed)."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- callers ------------------------------------------------------------------------------

    async def embed_many(
        self, images: Sequence[bytes], deadline: float | None = None
    ) -> list[np.ndarray | ImageSearchError]:
        """One vector or one error per image, in order. `deadline` is on the event loop's clock
        (loop.time()). Raises ResourceExhausted when the images do not fit in the queue."""
        with self._admit(len(images)):
            return await asyncio.gather(*(self._embed_one(data, deadline) for data in images))

    async def embed(self, data: bytes, deadline: float | None = None) -> np.ndarray:
        (outcome,) = await self.embed_many([data], deadline)
        if isinstance(outcome, ImageSearchError):
            raise outcome
        return outcome

    @contextlib.contextmanager
    def _admit(self, n: int) -> Iterator[None]:
        if self._queue is None or self._closing:
            raise Unavailable("the embedder is shutting down")
        if self._in_flight + n > self.config.max_queue_images:
            self.stats.rejected_overload += n
            raise ResourceExhausted(
                f"the embedder is busy: {self._in_flight} images in flight and {n} more would "
                f"exceed max_queue_images={self.config.max_queue_images}; retry with backoff"
            )
        self._in_flight += n
        assert self._idle is not None
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= n
            if self._in_flight == 0:
                self._idle.set()

    async def _embed_one(
        self, data: bytes, deadline: float | None
    ) -> np.ndarray | ImageSearchError:
        loop = asyncio.get_running_loop()
        try:
            tensor, decode_s, preprocess_s = await loop.run_in_executor(
                self._decode_pool, self._decode, data
            )
        except ImageSearchError as exc:
            self.stats.errors[type(exc).__name__] += 1
            return exc
        self.stats.decode_seconds += decode_s
        self.stats.preprocess_seconds += preprocess_s
        future: asyncio.Future[np.ndarray] = loop.create_future()
        assert self._queue is not None
        self._queue.put_nowait(_Pending(tensor, future, loop.time(), deadline))
        self._waiting += 1
        try:
            return await future
        except ImageSearchError as exc:
            self.stats.errors[type(exc).__name__] += 1
            return exc

    def _decode(self, data: bytes) -> tuple[torch.Tensor, float, float]:
        """The model's input tensor, and the seconds decoding and preprocessing took."""
        started = time.perf_counter()
        image = decode_image(data, self.limits)
        decoded = time.perf_counter()
        tensor = self.prepare(image)
        return tensor, decoded - started, time.perf_counter() - decoded

    # -- the batching loop --------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        max_delay = self.config.max_delay_ms / 1000.0
        try:
            while True:
                await self._next_batch(loop, max_delay)
        except asyncio.CancelledError:
            # Stopped past the grace period: whoever still waits gets an answer.
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(Unavailable("the embedder is shutting down"))
            raise

    async def _next_batch(self, loop: asyncio.AbstractEventLoop, max_delay: float) -> None:
        assert self._queue is not None
        first = await self._queue.get()
        batch = [first]
        close_at = first.enqueued + max_delay
        while len(batch) < self.config.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = close_at - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        live = self._drop_abandoned(batch, loop.time())
        self._waiting -= len(batch)
        if live:
            await self._compute(live)

    def _drop_abandoned(self, batch: list[_Pending], now: float) -> list[_Pending]:
        live = []
        for pending in batch:
            if pending.future.done():  # the caller cancelled
                self.stats.dropped_cancelled += 1
            elif pending.deadline is not None and now >= pending.deadline:
                self.stats.dropped_expired += 1
                pending.future.set_exception(
                    DeadlineExceeded("the deadline passed before the image reached the model")
                )
            else:
                live.append(pending)
        return live

    async def _compute(self, live: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(
                self._forward_pool, self.forward, torch.stack([p.tensor for p in live])
            )
        except Exception as exc:
            logger.exception("forward pass failed for a batch of %d", len(live))
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(
                        Unavailable(f"the model failed on this batch ({type(exc).__name__})")
                    )
            return
        self.stats.forward_seconds += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.images += len(live)
        self.stats.batch_sizes[len(live)] += 1
        for pending, vector in zip(live, vectors, strict=True):
            if not pending.future.done():
                pending.future.set_result(vector)
