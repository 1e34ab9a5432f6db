"""The client's ingest pipeline: Embed calls in flight while finished vectors stream to the
searcher's Upsert (imgsearch._upsert), with a report of what was stored and what failed."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc

from imgsearch import vectors
from imgsearch._channel import Service
from imgsearch._convert import embed_outcome
from imgsearch._upsert import UpsertWriter
from imgsearch.errors import ImageSearchError, ServiceUnreachable
from imgsearch.records import IngestItem, IngestReport
from imgsearch.v1 import embedder_pb2, embedder_pb2_grpc, searcher_pb2


class IngestPipeline:
    """Embeds items `images_per_request` at a time with up to `requests_in_flight` calls
    running, and hands their vectors to `writer` in messages of `items_per_message` items."""

    def __init__(
        self,
        embedder: Service,
        writer: UpsertWriter,
        collection: str,
        *,
        timeout_s: float,
        requests_in_flight: int,
        items_per_message: int,
        on_progress: Callable[[int], object] | None = None,
        heads: Sequence[str] = (),
        expected_items: int = 0,
    ) -> None:
        self.embedder = embedder
        self.writer = writer
        self.collection = collection
        self.timeout_s = timeout_s
        self.requests_in_flight = requests_in_flight
        self.items_per_message = items_per_message
        self.on_progress = on_progress
        # The collection's named vectors: the embedder's heads of those names, from its pass.
        self.heads = list(heads)
        # Said in every message, so that a stream the writer opens again says it too.
        self.expected_items = expected_items
        self.report = IngestReport()
        self._stub = embedder_pb2_grpc.EmbedderServiceStub(embedder.channel)
        self._pending: deque[tuple[list[IngestItem], Any]] = deque()
        self._batch: list[searcher_pb2.Item] = []

    def run(self, items: Iterable[IngestItem], images_per_request: int) -> IngestReport:
        """Ingest every item; raises what stopped the embedder or the writer, if anything did
        (the items stored before stay stored)."""
        try:
            for chunk in _chunks(items, images_per_request):
                request = embedder_pb2.EmbedRequest(
                    images=[embedder_pb2.Image(key=str(i.id), data=i.image) for i in chunk],
                    # A search waiting on the same embedder goes first (embedder.lanes).
                    priority=embedder_pb2.PRIORITY_BULK,
                    heads=self.heads,
                )
                future = self._stub.Embed.future(request, timeout=self.timeout_s)
                self._pending.append((chunk, future))
                if len(self._pending) >= self.requests_in_flight:
                    self._drain_one()
                if self.writer.error is not None:
                    break
            while self._pending and self.writer.error is None:
                self._drain_one()
            self._flush()
        finally:
            for _, future in self._pending:
                future.cancel()
            self.writer.close()  # raises what stopped the writer, if anything did
        self.report.inserted, self.report.updated = self.writer.inserted, self.writer.updated
        return self.report

    def _drain_one(self) -> None:
        """Wait for the oldest Embed call and queue its vectors (or record its failures)."""
        chunk, future = self._pending.popleft()
        try:
            response = future.result()
        except grpc.RpcError as exc:
            raise self._embedder_failed(exc) from None
        for item, result in zip(chunk, response.results, strict=True):
            outcome = embed_outcome(result)
            if isinstance(outcome, ImageSearchError):
                self.report.failed.append((item, str(outcome)))
                continue
            self._batch.append(
                searcher_pb2.Item(
                    id=item.id,
                    label=item.label,
                    uri=item.uri,
                    attributes=item.attributes,
                    vector=vectors.to_proto(outcome),
                    vectors={head: result.vectors[head] for head in self.heads},
                )
            )
        if len(self._batch) >= self.items_per_message:
            self._flush()
        if self.on_progress is not None:
            self.on_progress(len(chunk))

    def _flush(self) -> None:
        if self._batch:
            self.writer.put(
                searcher_pb2.UpsertRequest(
                    collection=self.collection,
                    items=self._batch,
                    expected_item_count=self.expected_items,
                )
            )
        self._batch = []

    def _embedder_failed(self, exc: grpc.RpcError) -> ImageSearchError:
        error = self.embedder.error(exc)
        what = (
            error
            if isinstance(error, ServiceUnreachable)
            else f"the embedder failed ({exc.code().name}: {error})"
        )
        return type(error)(
            f"{what}; the items stored before stay stored: run the same ingest again to resume"
        )


def _chunks(items: Iterable[IngestItem], size: int) -> Iterator[list[IngestItem]]:
    chunk: list[IngestItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
