"""The interceptor every RPC of both servers passes: bearer-token auth with read-only tokens,
limits on concurrent RPCs and on message size that name themselves, and RPC metrics.

One core (`RpcGuard` deciding, `_GuardedCall` following one RPC from admission to its end) and
two thin shells: `_SyncInterceptor` for the searcher's thread-pool server and `_AsyncInterceptor`
for the embedder's asyncio server. Health is never guarded: probes must work whatever the auth,
and however busy the server is.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from imgsearch.errors import MessageTooLarge
from serving.metrics import RpcMetrics
from serving.security import Tokens

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"

# gRPC's core refuses a message over its receive limit itself, before any Python code runs, with
# a text that does not name our setting. So the core's limit is set this many times above
# max_message_bytes and the guard checks the limit: a message up to that far over gets a message
# naming max_message_bytes, a larger one still gRPC's own refusal (RESOURCE_EXHAUSTED too).
CORE_RECEIVE_FACTOR = 2
GRPC_MAX_MESSAGE = 2**31 - 1  # gRPC's message lengths are signed 32-bit


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC server options for a server whose RpcGuard checks `max_message_bytes`."""
    core_limit = min(CORE_RECEIVE_FACTOR * max_message_bytes, GRPC_MAX_MESSAGE)
    return [
        ("grpc.max_receive_message_length", core_limit),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


@dataclass(frozen=True)
class _Oversized:
    """What the size-checking deserializer returns in place of a message over the limit."""

    size: int

    def error(self, limit: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"a message of {self.size} bytes; the limit is {limit} bytes (max_message_bytes)"
        )


class Refusal(Exception):
    """Why an RPC is not served: the status code and a message that names the limit or rule."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RpcGuard:
    """Decides whether an RPC may run, counts it while it runs, and records how it ended."""

    def __init__(
        self,
        *,
        max_concurrent_rpcs: int,
        max_message_bytes: int = GRPC_MAX_MESSAGE,
        write_methods: frozenset[str] = frozenset(),
        tokens: Tokens | None = None,
        metrics: RpcMetrics | None = None,
    ) -> None:
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.max_message_bytes = max_message_bytes
        self.write_methods = write_methods
        self.tokens = tokens
        self.metrics = metrics
        self._in_flight = 0
        self._lock = threading.Lock()

    def admit(self, method: str, metadata: Any, request: Any = None) -> Refusal | None:
        """None and one more RPC counted in flight, or why the RPC is refused."""
        refusal = self._check_token(method, metadata)
        if refusal is not None:
            return refusal
        if isinstance(request, _Oversized):
            return Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED, str(request.error(self.max_message_bytes))
            )
        with self._lock:
            if self._in_flight >= self.max_concurrent_rpcs:
                return Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._in_flight} RPCs in progress; the limit is {self.max_concurrent_rpcs} "
                    "(max_concurrent_rpcs): retry with backoff",
                )
            self._in_flight += 1
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        return None

    def _check_token(self, method: str, metadata: Any) -> Refusal | None:
        if self.tokens is None:
            return None
        role = self.tokens.role_of(metadata)
        if role is None:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token: send metadata 'authorization: Bearer <token>'",
            )
        if role == "read" and method in self.write_methods:
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} changes data; this token is read-only",
            )
        return None

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
        if self.metrics is not None:
            self.metrics.in_flight.dec()

    def record(self, method: str, code: grpc.StatusCode | None, started: float) -> None:
        if self.metrics is not None:
            self.metrics.record(method, code or grpc.StatusCode.OK, time.perf_counter() - started)

    def interceptor(self) -> grpc.ServerInterceptor:
        """The guard for a thread-pool server (grpc.server)."""
        return _SyncInterceptor(self)

    def aio_interceptor(self) -> grpc.aio.ServerInterceptor:
        """The guard for an asyncio server (grpc.aio.server)."""
        return _AsyncInterceptor(self)

    def guarded(self, handler: Any, details: Any) -> tuple[Any, _GuardedCall | None]:
        """The handler with size-checked requests, and the call that follows it; health and
        unknown methods pass unguarded (None)."""
        if handler is None or details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler, None
        return _size_checked(handler, self.max_message_bytes), _GuardedCall(
            self, details.method, details.invocation_metadata, handler
        )


class _GuardedCall:
    """One RPC through the guard: `enter` admits it (or raises its Refusal), `leave` releases it
    and records how it ended. Everything both shells share."""

    def __init__(self, guard: RpcGuard, method: str, metadata: Any, handler: Any) -> None:
        self.guard, self.method, self.metadata = guard, method, metadata
        self.request_streaming: bool = handler.request_streaming
        self.response_streaming: bool = handler.response_streaming
        self.name, self.behaviour = _behaviour(handler)
        self._started = 0.0
        self._admitted = False

    def enter(self, request: Any, checked: Callable[[Any, int], Any]) -> Any:
        """The request to hand on (a stream wrapped by `checked` for streaming methods)."""
        self._started = time.perf_counter()
        refusal = self.guard.admit(self.method, self.metadata, request)
        if refusal is not None:
            self.guard.record(self.method, refusal.code, self._started)
            raise refusal
        self._admitted = True
        return checked(request, self.guard.max_message_bytes) if self.request_streaming else request

    def leave(self, context: Any, failed: bool) -> None:
        if not self._admitted:
            return
        self.guard.release()
        code = context.code()
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        self.guard.record(self.method, code, self._started)


def _refusal_of(exc: Refusal | MessageTooLarge) -> Refusal:
    """A Refusal as raised, or one for a request stream that went over the size limit (raised
    where a service that does not map our errors reads its stream)."""
    return (
        exc if isinstance(exc, Refusal) else Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    )


class _SyncInterceptor(grpc.ServerInterceptor):
    def __init__(self, guard: RpcGuard) -> None:
        self.guard = guard

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler, call = self.guard.guarded(continuation(details), details)
        if call is None:
            return handler

        def responses(request: Any, context: Any) -> Iterator[Any]:
            failed = True
            try:
                request = call.enter(request, _checked_requests)
                if call.response_streaming:
                    yield from call.behaviour(request, context)
                else:
                    yield call.behaviour(request, context)
                failed = False
            except (Refusal, MessageTooLarge) as exc:
                refusal = _refusal_of(exc)
                context.abort(refusal.code, refusal.message)
            finally:
                call.leave(context, failed)

        def unary(request: Any, context: Any) -> Any:
            (response,) = responses(request, context)
            return response

        return handler._replace(**{call.name: responses if call.response_streaming else unary})


class _AsyncInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, guard: RpcGuard) -> None:
        self.guard = guard

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler, call = self.guard.guarded(await continuation(details), details)
        if call is None:
            return handler

        async def responses(request: Any, context: Any) -> AsyncIterator[Any]:
            failed = True
            try:
                request = call.enter(request, _checked_requests_async)
                result = call.behaviour(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:  # a unary response, or a streaming handler that writes with context.write()
                    response = await result if inspect.isawaitable(result) else result
                    if not call.response_streaming:
                        yield response
                failed = False
            except (Refusal, MessageTooLarge) as exc:
                refusal = _refusal_of(exc)
                await context.abort(refusal.code, refusal.message)
            finally:
                call.leave(context, failed)

        async def unary(request: Any, context: Any) -> Any:
            return [response async for response in responses(request, context)][0]

        return handler._replace(**{call.name: responses if call.response_streaming else unary})


_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _behaviour(handler: Any) -> tuple[str, Callable[..., Any]]:
    for name in _BEHAVIOURS:
        function = getattr(handler, name)
        if function is not None:
            return name, function
    raise ValueError("handler has no behaviour")


def _size_checked(handler: Any, limit: int) -> Any:
    """`handler` with a deserializer that puts _Oversized in place of a message over `limit`."""
    parse = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return _Oversized(len(data))  # not parsed: the guard refuses it
        return parse(data) if parse is not None else data

    return handler._replace(request_deserializer=deserialize)


def _checked_requests(requests: Iterable[Any], limit: int) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Oversized):
            raise request.error(limit)
        yield request


async def _checked_requests_async(requests: AsyncIterator[Any], limit: int) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Oversized):
            raise request.error(limit)
        yield request
