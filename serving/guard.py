"""The interceptor every RPC of both servers passes: bearer-token auth with read-only tokens,
limits on concurrent RPCs and on message size that name themselves, and RPC metrics.

Health is never guarded: probes must work whatever the auth, and however busy the server is.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from imgsearch.errors import ResourceExhausted
from serving.metrics import RpcMetrics
from serving.security import Tokens

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"

# -- message size -------------------------------------------------------------------------------

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


class MessageTooLarge(ResourceExhausted):
    """A request message over max_message_bytes: raised where a request stream is read, so the
    service can say which messages before it were taken."""


@dataclass(frozen=True)
class _Oversized:
    """What the size-checking deserializer returns in place of a message over the limit."""

    size: int

    def error(self, limit: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"a message of {self.size} bytes; the limit is {limit} bytes (max_message_bytes)"
        )


def _size_checked(handler: Any, limit: int) -> Any:
    """`handler` with a deserializer that puts _Oversized in place of a message over `limit`."""
    parse = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return _Oversized(len(data))  # not parsed: the guard refuses it
        return parse(data) if parse is not None else data

    return handler._replace(request_deserializer=deserialize)


def _checked_requests(requests: Iterable[Any], limit: int) -> Iterable[Any]:
    for request in requests:
        if isinstance(request, _Oversized):
            raise request.error(limit)
        yield request


async def _checked_requests_async(requests: Any, limit: int) -> Any:
    async for request in requests:
        if isinstance(request, _Oversized):
            raise request.error(limit)
        yield request


# -- the guard: auth, limits, metrics -----------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str


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
        if self.tokens is not None:
            role = self.tokens.role_of(metadata)
            if role is None:
                return Refusal(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown bearer token: send metadata "
                    "'authorization: Bearer <token>'",
                )
            if role == "read" and method in self.write_methods:
                return Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method.rsplit('/', 1)[-1]} changes data; this token is read-only",
                )
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

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
        if self.metrics is not None:
            self.metrics.in_flight.dec()

    def record(self, method: str, code: grpc.StatusCode | None, started: float) -> None:
        if self.metrics is not None:
            self.metrics.record(method, code or grpc.StatusCode.OK, time.perf_counter() - started)

    def interceptor(self) -> grpc.ServerInterceptor:
        return _SyncInterceptor(self)

    def aio_interceptor(self) -> grpc.aio.ServerInterceptor:
        return _AsyncInterceptor(self)


_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _behaviour(handler: Any) -> tuple[str, Callable[..., Any]]:
    for name in _BEHAVIOURS:
        function = getattr(handler, name)
        if function is not None:
            return name, function
    raise ValueError("handler has no behaviour")


def _ended_with(context: Any, failed: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class _SyncInterceptor(grpc.ServerInterceptor):
    def __init__(self, guard: RpcGuard) -> None:
        self.guard = guard

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        guard, metadata = self.guard, details.invocation_metadata
        name, behaviour = _behaviour(handler)
        limit = guard.max_message_bytes
        handler = _size_checked(handler, limit)

        def enter(request: Any, context: Any) -> tuple[Any, float]:
            started = time.perf_counter()
            refusal = guard.admit(method, metadata, request)
            if refusal is not None:
                guard.record(method, refusal.code, started)
                context.abort(refusal.code, refusal.message)
            if handler.request_streaming:
                request = _checked_requests(request, limit)
            return request, started

        if handler.response_streaming:

            def streaming(request: Any, context: Any) -> Any:
                request, started = enter(request, context)
                failed = True
                try:
                    yield from behaviour(request, context)
                    failed = False
                except MessageTooLarge as exc:  # from a service that does not map our errors
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                finally:
                    guard.release()
                    guard.record(method, _ended_with(context, failed), started)

            return handler._replace(**{name: streaming})

        def unary(request: Any, context: Any) -> Any:
            request, started = enter(request, context)
            failed = True
            try:
                response = behaviour(request, context)
                failed = False
                return response
            except MessageTooLarge as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            finally:
                guard.release()
                guard.record(method, _ended_with(context, failed), started)

        return handler._replace(**{name: unary})


class _AsyncInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, guard: RpcGuard) -> None:
        self.guard = guard

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        guard, metadata = self.guard, details.invocation_metadata
        name, behaviour = _behaviour(handler)
        limit = guard.max_message_bytes
        handler = _size_checked(handler, limit)

        async def enter(request: Any, context: Any) -> tuple[Any, float]:
            started = time.perf_counter()
            refusal = guard.admit(method, metadata, request)
            if refusal is not None:
                guard.record(method, refusal.code, started)
                await context.abort(refusal.code, refusal.message)
            if handler.request_streaming:
                request = _checked_requests_async(request, limit)
            return request, started

        if handler.response_streaming:

            async def streaming(request: Any, context: Any) -> Any:
                request, started = await enter(request, context)
                failed = True
                try:
                    result = behaviour(request, context)
                    if inspect.isasyncgen(result):
                        async for response in result:
                            yield response
                    else:  # a handler that writes with context.write()
                        await result
                    failed = False
                except MessageTooLarge as exc:  # from a service that does not map our errors
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                finally:
                    guard.release()
                    guard.record(method, _ended_with(context, failed), started)

            return handler._replace(**{name: streaming})

        async def unary(request: Any, context: Any) -> Any:
            request, started = await enter(request, context)
            failed = True
            try:
                result = behaviour(request, context)
                response = await result if inspect.isawaitable(result) else result
                failed = False
                return response
            except MessageTooLarge as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            finally:
                guard.release()
                guard.record(method, _ended_with(context, failed), started)

        return handler._replace(**{name: unary})
