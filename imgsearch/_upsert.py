"""Streaming Upsert with replay: what ingest uses to send vectors to the searcher.

Messages go out on a client stream from a background thread. Every message is its own
transaction on the server and upserting an id again only updates it, so when the stream fails
with UNAVAILABLE (a searcher restarting, a connection reset) the messages of that stream are simply
sent again on a new one, after a backoff. Streams are closed every `messages_per_stream` messages
so that what must be kept for a replay stays bounded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from imgsearch._status import error_from_rpc
from imgsearch.errors import ImageSearchError
from imgsearch.v1 import searcher_pb2

logger = logging.getLogger(__name__)

_END: Any = object()


class UpsertWriter:
    def __init__(
        self,
        upsert: Any,
        *,
        timeout_s: float,
        messages_per_stream: int = 64,
        attempts: int = 5,
        initial_backoff_s: float = 0.5,
        translate: Callable[[grpc.RpcError], ImageSearchError] = error_from_rpc,
    ) -> None:
        self._upsert = upsert  # the stub's Upsert (stream-unary) method
        self._translate = translate
        self._timeout_s = timeout_s
        self._per_stream = messages_per_stream
        self._attempts = attempts
        self._initial_backoff_s = initial_backoff_s
        self._outbox: queue.Queue[searcher_pb2.UpsertRequest | None] = queue.Queue(maxsize=4)
        self.inserted = 0
        self.updated = 0
        self.error: BaseException | None = None
        self._closed = False  # the producer's end (None) has been taken from the outbox
        self._thread = threading.Thread(target=self._run, name="upsert", daemon=True)
        self._thread.start()

    def put(self, message: searcher_pb2.UpsertRequest) -> None:
        """Queue a message (blocks while a few are already waiting: back-pressure)."""
        if self.error is None:
            self._outbox.put(message)

    def close(self) -> None:
        """Send what is queued, wait for the last commit; raise the error that stopped it."""
        self._outbox.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        ended = False
        try:
            while not ended:
                ended = self._one_stream()
        except BaseException as exc:  # re-raised by close() in the caller's thread
            self.error = exc
            # Let the producer finish, unless its end was already taken: waiting for it again
            # would hang close() (a searcher that stayed away through the last replays did).
            while not self._closed and self._outbox.get() is not None:
                pass

    def _one_stream(self) -> bool:
        """Send up to messages_per_stream messages on one stream, replaying it on UNAVAILABLE.
        Returns True when the producer has closed the outbox."""
        sent: list[searcher_pb2.UpsertRequest] = []
        ended = False
        backoff = self._initial_backoff_s
        for attempt in range(1, self._attempts + 1):
            requests: queue.Queue[Any] = queue.Queue()
            for message in sent:  # a replay: idempotent by id
                requests.put(message)
            call = self._upsert.future(_until_end(requests), timeout=self._timeout_s)
            while not call.done() and not ended and len(sent) < self._per_stream:
                try:
                    queued = self._outbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                if queued is None:
                    ended = self._closed = True
                else:
                    sent.append(queued)
                    requests.put(queued)
            requests.put(_END)
            try:
                response = call.result()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self._attempts:
                    raise self._translate(exc) from None
                logger.warning(
                    "searcher unavailable (%s); re-sending %d messages in %.1f s",
                    exc.details(),
                    len(sent),
                    backoff,
                )
                time.sleep(backoff)
                backoff *= 2
                continue
            self.inserted += response.inserted_count
            self.updated += response.updated_count
            return ended
        raise AssertionError("unreachable")


def _until_end(requests: queue.Queue[Any]) -> Iterator[searcher_pb2.UpsertRequest]:
    while (message := requests.get()) is not _END:
        yield message
