"""Dynamic batching: many callers, one model, batches formed on the fly. No gRPC here.

Callers hand in encoded images and await their vectors. Each image is decoded and preprocessed in
a thread pool first (so a bad image fails alone and decoding runs in parallel with the model),
then queued. One loop takes the queue's head, waits at most `max_delay_ms` after that image
arrived for the batch to fill up to `max_batch_size`, drops images whose caller has gone (cancelled
or past its deadline), and runs the forward pass in its own thread so the event loop stays free.
Admission is bounded: past `max_queue_images` in flight, callers get ResourceExhausted at once
rather than a queue that grows without end.

Every image comes in a lane (embedder.lanes): interactive or bulk. Decoding serves the
interactive lane first; a batch holds one lane's images only, and each lane has its own forward
thread with one batch at a time (`forward_workers` threads and batches, when set): a search's
image is decoded next and runs through the model at once, beside an import's batch in progress
rather than after it (on 2 cores that batch of 8 takes ~40 ms). A bulk batch being filled gives
its turn back when an interactive image arrives. While a lane's pass runs, its next batch is
formed as soon as a full one waits (`batches_ahead`), so the model goes from one pass to the
next without waiting for this loop.
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

from embedder.decode import DecodeLimits, decode_image
from embedder.lanes import Lane, LaneQueue
from embedder.preprocessing import Prepare, preprocess, stack
from imgsearch.errors import DeadlineExceeded, ImageSearchError, ResourceExhausted, Unavailable

logger = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BatcherConfig:
    # Measured on the 2-core CPUs (bench/embedder.py): batch 8 beats 16 and 32 (cache).
    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_queue_images: int = 512
    decode_workers: int = 2
    # While bulk work waits, at most this many interactive turns (decodes, batches) in a row.
    max_interactive_run: int = 4
    # Batches of one lane run through the model at once (each in its own thread).
    forward_workers: int = 1
    # Full batches of one lane formed while its passes run, each queued to start the moment a
    # pass ends rather than after a trip through the event loop: at 16 clients on 2 cores that
    # trip left the cores idle ~0.9 ms per image (bench/RESULTS.md).
    batches_ahead: int = 1


# Upper bounds (seconds) of the queue-wait histogram's buckets.
WAIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class WaitHistogram:
    """How long images waited from admission to their batch's start (decoding included)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(WAIT_BUCKETS_S))
    total: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum_s += seconds
        for i, bound in enumerate(WAIT_BUCKETS_S):
            if seconds <= bound:
                self.counts[i] += 1
                break


@dataclass
class BatcherStats:
    """Counters for tests, benchmarks and metrics export. Updated on the event loop."""

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
    lane_images: collections.Counter[Lane] = field(default_factory=collections.Counter)
    lane_batches: collections.Counter[Lane] = field(default_factory=collections.Counter)
    queue_wait: dict[Lane, WaitHistogram] = field(
        default_factory=lambda: {lane: WaitHistogram() for lane in Lane}
    )

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0


@dataclass
class _Decoding:
    data: bytes
    future: asyncio.Future[tuple[np.ndarray, float, float]]


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future[np.ndarray]
    admitted: float
    enqueued: float
    deadline: float | None


class Batcher:
    def __init__(
        self,
        forward: Forward,
        config: BatcherConfig = BatcherConfig(),
        limits: DecodeLimits | None = None,
        prepare: Prepare = preprocess,
    ) -> None:
        self.forward = forward
        self.prepare = prepare  # decoded picture -> the model's input tensor
        self.config = config
        self.limits = limits or DecodeLimits()
        self.stats = BatcherStats()
        self._queue: LaneQueue[_Pending] | None = None  # decoded, waiting for a batch
        self._decoding: LaneQueue[_Decoding] | None = None  # waiting for a decoding thread
        self._loop_task: asyncio.Task[None] | None = None
        self._decode_tasks: list[asyncio.Task[None]] = []
        self._decode_pool: ThreadPoolExecutor | None = None
        # Threads per lane: a search's batch runs beside an import's batch in progress rather
        # than after it (and forward_workers batches per lane at a time, one by default, keeps
        # batches formed late).
        self._forward_pools: dict[Lane, ThreadPoolExecutor] = {}
        self._running: dict[Lane, set[asyncio.Task[None]]] = {lane: set() for lane in Lane}
        self._in_flight = 0
        self._waiting = 0
        self._idle: asyncio.Event | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = LaneQueue(self.config.max_interactive_run)
        # Decoding turns are single images: a batch's worth of them per batch turn.
        self._decoding = LaneQueue(self.config.max_interactive_run * self.config.max_batch_size)
        self._idle = asyncio.Event()
        self._idle.set()
        self._decode_pool = ThreadPoolExecutor(
            self.config.decode_workers, thread_name_prefix="decode"
        )
        self._forward_pools = {
            lane: ThreadPoolExecutor(
                self.config.forward_workers, thread_name_prefix=f"forward-{lane.value}"
            )
            for lane in Lane
        }
        self._closing = False
        self._loop_task = asyncio.create_task(self._run(), name="batcher")
        # As many decoders as threads: the pool's own FIFO never holds a backlog that an
        # interactive image would wait behind; the lanes hold it.
        self._decode_tasks = [
            asyncio.create_task(self._decode_next(), name=f"decode-{i}")
            for i in range(self.config.decode_workers)
        ]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work, let admitted images finish (up to grace_s), then shut down."""
        self._closing = True
        if self._idle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for task in [*self._decode_tasks, self._loop_task]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._decode_tasks = []
        for pool in (self._decode_pool, *self._forward_pools.values()):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._loop_task = self._decode_pool = None
        self._forward_pools = {}

    @property
    def queue_depth(self) -> int:
        """Images decoded and waiting for the model (queued or in a batch being formed)."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def lane_waiting(self, lane: Lane) -> tuple[int, int]:
        """Images of `lane` waiting for a decoding thread, and decoded ones waiting for a batch."""
        if self._decoding is None or self._queue is None:
            return 0, 0
        return self._decoding.waiting(lane), self._queue.waiting(lane)

    # -- callers ------------------------------------------------------------------------------

    async def embed_many(
        self,
        images: Sequence[bytes],
        deadline: float | None = None,
        lane: Lane = Lane.INTERACTIVE,
    ) -> list[np.ndarray | ImageSearchError]:
        """One vector or one error per image, in order. `deadline` is on the event loop's clock
        (loop.time()). Raises ResourceExhausted when the images do not fit in the queue."""
        with self._admit(len(images)):
            return await asyncio.gather(*(self._embed_one(data, deadline, lane) for data in images))

    async def embed(
        self, data: bytes, deadline: float | None = None, lane: Lane = Lane.INTERACTIVE
    ) -> np.ndarray:
        (outcome,) = await self.embed_many([data], deadline, lane)
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
        self, data: bytes, deadline: float | None, lane: Lane
    ) -> np.ndarray | ImageSearchError:
        loop = asyncio.get_running_loop()
        admitted = loop.time()
        decoded: asyncio.Future[tuple[np.ndarray, float, float]] = loop.create_future()
        assert self._decoding is not None and self._queue is not None
        self._decoding.put(_Decoding(data, decoded), lane)
        try:
            tensor, decode_s, preprocess_s = await decoded
        except ImageSearchError as exc:
            self.stats.errors[type(exc).__name__] += 1
            return exc
        self.stats.decode_seconds += decode_s
        self.stats.preprocess_seconds += preprocess_s
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put(_Pending(tensor, future, admitted, loop.time(), deadline), lane)
        self._waiting += 1
        try:
            return await future
        except ImageSearchError as exc:
            self.stats.errors[type(exc).__name__] += 1
            return exc

    async def _decode_next(self) -> None:
        """One decoder: the next image by the lanes' turn rule, decoded in the pool, forever."""
        assert self._decoding is not None
        loop = asyncio.get_running_loop()
        while True:
            job, _ = await self._decoding.get()
            if job.future.done():  # the caller has gone
                continue
            try:
                outcome = await loop.run_in_executor(self._decode_pool, self._decode, job.data)
            except asyncio.CancelledError:
                if not job.future.done():
                    job.future.set_exception(Unavailable("the embedder is shutting down"))
                raise
            except Exception as exc:  # the image's own error (or a bug), for its caller
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(outcome)

    def _decode(self, data: bytes) -> tuple[np.ndarray, float, float]:
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
                lane = self._lane_to_run()
                if lane is None:
                    await self._queue.changed()  # an image came, or a lane's batch finished
                    continue
                batch = await self._form_batch(lane, loop, max_delay)
                if batch:
                    task = asyncio.create_task(self._compute(batch, lane))
                    self._running[lane].add(task)
                    task.add_done_callback(self._running[lane].discard)
                    task.add_done_callback(self._lane_finished)
        except asyncio.CancelledError:
            # Stopped past the grace period: whoever still waits gets an answer.
            for tasks in self._running.values():
                for task in tasks:
                    task.cancel()
            for lanes in (self._queue, self._decoding):
                while lanes is not None and len(lanes):
                    waiting, _ = lanes.take_next()
                    if not waiting.future.done():
                        waiting.future.set_exception(Unavailable("the embedder is shutting down"))
            raise

    def _lane_finished(self, _: asyncio.Task[None]) -> None:
        if self._queue is not None:
            self._queue.notify()  # its lane may form its next batch

    def _lane_free(self, lane: Lane) -> bool:
        return len(self._running[lane]) < self.config.forward_workers

    def _lane_to_run(self) -> Lane | None:
        """The lane whose batch to form next, interactive first: images waiting and fewer than
        forward_workers batches of its own running; or a full batch waiting and fewer than
        batches_ahead of its batches queued behind the running ones."""
        assert self._queue is not None
        limit = self.config.forward_workers + self.config.batches_ahead
        for lane in (Lane.INTERACTIVE, Lane.BULK):
            waiting = self._queue.waiting(lane)
            if waiting and self._lane_free(lane):
                return lane
            if waiting >= self.config.max_batch_size and len(self._running[lane]) < limit:
                return lane
        return None

    async def _form_batch(
        self, lane: Lane, loop: asyncio.AbstractEventLoop, max_delay: float
    ) -> list[_Pending]:
        """Up to max_batch_size images of `lane`, waiting at most max_delay after the first
        arrived; empty when the turn is given back (a bulk batch still filling when an
        interactive image arrives that can run now) or every image was abandoned."""
        queue = self._queue
        assert queue is not None
        queue.start_turn(lane)
        batch = [queue.take(lane)]
        close_at = batch[0].enqueued + max_delay
        while len(batch) < self.config.max_batch_size:
            if queue.waiting(lane):
                batch.append(queue.take(lane))
                continue
            remaining = close_at - loop.time()
            if remaining <= 0 or not await queue.changed(remaining):
                break
            if (
                lane is Lane.BULK
                and queue.waiting(Lane.INTERACTIVE)
                and self._lane_free(Lane.INTERACTIVE)
            ):
                queue.put_back(batch, lane)  # a search's image arrived: it goes first
                return []
        now = loop.time()
        live = self._drop_abandoned(batch, now)
        self._waiting -= len(batch)
        if live:
            self.stats.lane_batches[lane] += 1
            self.stats.lane_images[lane] += len(live)
            for pending in live:
                self.stats.queue_wait[lane].observe(now - pending.admitted)
        return live

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

    async def _compute(self, live: list[_Pending], lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(
                self._forward_pools[lane], self.forward, stack([p.tensor for p in live])
            )
        except asyncio.CancelledError:
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(Unavailable("the embedder is shutting down"))
            raise
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
