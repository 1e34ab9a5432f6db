"""Two lanes of work for the embedder: a person's search ahead of a bulk import. No gRPC here.

An image travels the interactive lane (a search: a few images, someone waiting) or the bulk lane
(an ingest: thousands, throughput matters, a second here or there does not). Where work waits
(for a decoding thread, for a batch), the interactive lane's head goes first. Bulk is never
starved: after `max_interactive_run` interactive turns in a row while bulk work waited, the next
turn is bulk's, so bulk keeps at least 1 / (max_interactive_run + 1) of the turns under any
steady interactive load.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lane(enum.Enum):
    INTERACTIVE = "interactive"
    BULK = "bulk"


class LaneQueue(Generic[T]):
    """Two FIFO lanes with a turn rule (see the module's docstring); used on one event loop."""

    def __init__(self, max_interactive_run: int) -> None:
        if max_interactive_run < 1:
            raise ValueError(f"max_interactive_run must be at least 1, got {max_interactive_run}")
        self.max_interactive_run = max_interactive_run
        self._lanes: dict[Lane, collections.deque[T]] = {lane: collections.deque() for lane in Lane}
        self._run = 0  # interactive turns in a row while bulk work waited
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return sum(len(items) for items in self._lanes.values())

    def waiting(self, lane: Lane) -> int:
        return len(self._lanes[lane])

    def put(self, item: T, lane: Lane) -> None:
        self._lanes[lane].append(item)
        self._changed.set()

    def put_back(self, items: Iterable[T], lane: Lane) -> None:
        """Return taken items to the head of their lane, in their order (a turn given back)."""
        self._lanes[lane].extendleft(reversed(list(items)))
        self._changed.set()

    def next_lane(self) -> Lane | None:
        """Whose turn it is: interactive when it waits, unless bulk's turn is due; None if empty."""
        interactive, bulk = (self.waiting(lane) for lane in Lane)
        if interactive and not (bulk and self._run >= self.max_interactive_run):
            return Lane.INTERACTIVE
        if bulk:
            return Lane.BULK
        return None

    def start_turn(self, lane: Lane) -> None:
        """Count a turn taken by `lane` (a decode, a batch) for the turn rule."""
        if lane is Lane.BULK:
            self._run = 0
        elif self.waiting(Lane.BULK):
            self._run += 1

    def take(self, lane: Lane) -> T:
        """The head of `lane`, which must not be empty (no turn is counted)."""
        return self._lanes[lane].popleft()

    def take_next(self) -> tuple[T, Lane]:
        """The head of the lane whose turn it is, the turn counted; IndexError if both are empty."""
        lane = self.next_lane()
        if lane is None:
            raise IndexError("both lanes are empty")
        self.start_turn(lane)
        return self.take(lane), lane

    def notify(self) -> None:
        """Wake whoever waits in changed() (something they wait for besides items happened)."""
        self._changed.set()

    async def changed(self, timeout_s: float | None = None) -> bool:
        """Wait until an item is put (or put back) or notify() is called, at most `timeout_s`;
        False on timeout."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def get(self) -> tuple[T, Lane]:
        """take_next(), waiting while both lanes are empty."""
        while not len(self):
            await self.changed()
        return self.take_next()
