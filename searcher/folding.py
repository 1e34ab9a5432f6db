"""How fast fresh rows are folded into a collection's index: writes first. While writes into
the collection go on, a fold moves one batch at a time with at most `share` of one core; once
they stop, a batch per core at once."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

from searcher.catalogue import Collection
from searcher.indexes import IndexBuilder
from searcher.pool import BULK_WORKERS

logger = logging.getLogger(__name__)

# Fresh rows are folded into the graph this many at a time (~0.4 s of graph inserts at 100k),
# by BULK_WORKERS connections at once when writes have stopped.
FOLD_BATCH_ROWS = 100
# Writes count as going on until this long after the last one ended.
WRITES_QUIET_S = 2.0


class FoldPace:
    def __init__(self, builder: IndexBuilder, share: float, stopping: threading.Event) -> None:
        self.builder = builder
        # Most of one core that folding takes while writes go on.
        self.share = min(max(share, 0.01), 1.0)
        self._stopping = stopping
        self._lock = threading.Lock()
        self._last_write: dict[str, float] = {}

    def writing(self, name: str) -> None:
        """A write into the collection just went in."""
        with self._lock:
            self._last_write[name] = time.monotonic()

    def writes_going_on(self, name: str) -> bool:
        with self._lock:
            last = self._last_write.get(name)
        return last is not None and time.monotonic() - last < WRITES_QUIET_S

    def fold(self, collection: Collection, kept: int) -> int:
        """Fold the collection's fresh rows (but the `kept` buckets, IndexBuilder.fold) until
        none is left, a build takes them, or the upkeep stops; how many."""
        name = collection.name
        folded, started = 0, time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(BULK_WORKERS, "fold") as workers:
            while not self._stopping.is_set():
                batch, writing = time.monotonic(), self.writes_going_on(name)
                # Idle: a batch per core at once (their rows never overlap: SKIP LOCKED).
                batches = 1 if writing else BULK_WORKERS
                moved = sum(
                    workers.map(
                        lambda _: self.builder.fold(collection, FOLD_BATCH_ROWS, kept) or 0,
                        range(batches),
                    )
                )
                if not moved:
                    break  # none left, or a build runs that takes them in
                folded += moved
                if writing:
                    self._stopping.wait((time.monotonic() - batch) * (1 / self.share - 1))
        if folded:
            logger.info(
                "%s: %d fresh rows folded into the index in %.1f s",
                *(name, folded, time.monotonic() - started),
            )
        return folded
