"""EmbedderService over gRPC asyncio: a thin translation layer over the batcher and the model."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from embedder.batcher import Batcher
from embedder.calibration import DuplicateDistances
from embedder.lanes import Lane
from embedder.spec import SHARED_PASS_GEM, HeadInfo, ModelInfo
from imgsearch import vectors
from imgsearch._status import abort_status, status_of
from imgsearch.errors import ImageSearchError, InvalidArgument, ResourceExhausted
from imgsearch.v1 import embedder_pb2 as pb
from imgsearch.v1 import embedder_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = "imgsearch.v1.EmbedderService"

WEIGHTS_SOURCE_TO_PROTO = {
    "imagenet": pb.WEIGHTS_SOURCE_IMAGENET,
    "checkpoint": pb.WEIGHTS_SOURCE_CHECKPOINT,
    "random": pb.WEIGHTS_SOURCE_RANDOM,
}
HEAD_TO_PROTO = {
    "logits": pb.HEAD_LOGITS,
    "gem": pb.HEAD_GEM,
    SHARED_PASS_GEM: pb.HEAD_GEM_SHARED_PASS,
}
LANE_OF_PRIORITY = {pb.PRIORITY_INTERACTIVE: Lane.INTERACTIVE, pb.PRIORITY_BULK: Lane.BULK}


def map_errors_async(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Raised exceptions become gRPC statuses (unexpected ones INTERNAL, logged)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await context.abort_with_status(abort_status(exc))

    return wrapper


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(
        self,
        batcher: Batcher,
        info: ModelInfo,
        *,
        duplicates: dict[str, DuplicateDistances] | None = None,
        max_images_per_request: int = 256,
        stream_window_images: int = 64,
    ) -> None:
        self.batcher = batcher
        self.info = info
        self.duplicates = duplicates or {}
        self.heads = {head.name: head for head in info.heads}
        self.max_images_per_request = max_images_per_request
        # How far EmbedStream reads ahead of what it has answered: enough to keep batches full,
        # small enough that a fast sender waits on gRPC flow control, not on our memory.
        self.stream_window_images = stream_window_images

    @map_errors_async
    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        # Unset: a call of one batch or less is someone waiting; more is an import's work.
        few = len(request.images) <= self.batcher.config.max_batch_size
        lane = LANE_OF_PRIORITY.get(request.priority, Lane.INTERACTIVE if few else Lane.BULK)
        results = await self._embed(request.images, request.heads, _deadline(context), lane)
        return pb.EmbedResponse(results=results)

    async def EmbedStream(
        self,
        request_iterator: AsyncIterator[pb.EmbedStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        window = asyncio.Semaphore(self.stream_window_images)
        answers: asyncio.Queue[tuple[asyncio.Task[list[pb.EmbedResult]], int] | None] = (
            asyncio.Queue()
        )
        deadline = _deadline(context)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    n = min(len(request.images), self.stream_window_images)
                    for _ in range(n):
                        await window.acquire()
                    lane = LANE_OF_PRIORITY.get(request.priority, Lane.BULK)
                    task = asyncio.create_task(
                        self._embed(request.images, request.heads, deadline, lane)
                    )
                    await answers.put((task, n))
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (entry := await answers.get()) is not None:
                task, n = entry
                try:
                    results = await task
                finally:
                    for _ in range(n):
                        window.release()
                yield pb.EmbedStreamResponse(results=results)
            await reader  # re-raise a failure to read the stream
        except ImageSearchError as exc:
            await context.abort_with_status(abort_status(exc))
        finally:
            reader.cancel()
            while not answers.empty():
                entry = answers.get_nowait()
                if entry is not None:
                    entry[0].cancel()

    @map_errors_async
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        info = self.info
        first = self.duplicates.get(info.head)
        return pb.GetModelInfoResponse(
            model=info.model,
            weights_source=WEIGHTS_SOURCE_TO_PROTO[info.weights_source],
            weights=info.weights,
            head=HEAD_TO_PROTO[info.heads[0].kind],
            dim=info.dim,
            preprocessing=info.preprocessing,
            device=info.device,
            runtime=info.runtime,
            fingerprint=info.fingerprint,
            max_batch_size=self.batcher.config.max_batch_size,
            max_images_per_request=self.max_images_per_request,
            max_image_bytes=self.batcher.limits.max_image_bytes,
            max_image_pixels=self.batcher.limits.max_image_pixels,
            duplicate_distance=first.l2 if first else 0,
            duplicate_cosine_distance=first.cosine if first else 0,
            duplicate_calibration=first.note if first else "",
            heads=[self._head_info(head) for head in info.heads],
        )

    def _head_info(self, head: HeadInfo) -> pb.HeadInfo:
        distances = self.duplicates.get(head.name)
        return pb.HeadInfo(
            name=head.name,
            head=HEAD_TO_PROTO[head.kind],
            dim=head.dim,
            fingerprint=head.fingerprint,
            preprocessing=head.preprocessing,
            duplicate_distance=distances.l2 if distances else 0,
            duplicate_cosine_distance=distances.cosine if distances else 0,
            duplicate_calibration=distances.note if distances else "",
        )

    async def _embed(
        self, images: Any, head_names: Any, deadline: float | None, lane: Lane
    ) -> list[pb.EmbedResult]:
        if len(images) > self.max_images_per_request:
            raise ResourceExhausted(
                f"{len(images)} images in one request; the limit is "
                f"{self.max_images_per_request} (max_images_per_request)"
            )
        unknown = [name for name in head_names if name not in self.heads]
        if unknown:
            raise InvalidArgument(
                f"this embedder has no head {unknown[0]!r}; it serves "
                f"{', '.join(self.heads)} (GetModelInfo heads)"
            )
        first = self.info.heads[0]
        named = [self.heads[name] for name in dict.fromkeys(head_names)]
        keys = [image.key for image in images]
        outcomes = await self.batcher.embed_many([image.data for image in images], deadline, lane)
        return [
            _result(key, outcome, first, named) for key, outcome in zip(keys, outcomes, strict=True)
        ]


def _result(key: str, outcome: Any, first: HeadInfo, named: list[HeadInfo]) -> pb.EmbedResult:
    if isinstance(outcome, ImageSearchError):
        return pb.EmbedResult(key=key, error=status_of(outcome))
    return pb.EmbedResult(
        key=key,
        vector=vectors.to_proto(first.of(outcome)),
        vectors={head.name: vectors.to_proto(head.of(outcome)) for head in named},
    )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining
