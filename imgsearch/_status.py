"""The one table from imgsearch's exceptions to gRPC status codes, used by both servers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_status import rpc_status

from imgsearch import errors

logger = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.ImageSearchError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code_of(exc: errors.ImageSearchError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN


def abort_status(exc: BaseException) -> grpc.Status:
    """The status that `exc` maps to; unexpected errors become INTERNAL (and are logged)."""
    return rpc_status.to_status(status_of(exc))


def status_of(exc: BaseException) -> status_pb2.Status:
    """`exc` as a google.rpc.Status message (for one item's error inside a response); unexpected
    errors become INTERNAL (and are logged)."""
    detail: Message | None = None
    if isinstance(exc, errors.DetailedError):
        detail, exc = exc.detail, exc.error
    if isinstance(exc, errors.ImageSearchError):
        status = status_pb2.Status(code=status_code_of(exc).value[0], message=str(exc))
    else:
        logger.error("unexpected error in %s", type(exc).__name__, exc_info=exc)
        status = status_pb2.Status(
            code=grpc.StatusCode.INTERNAL.value[0],
            message=f"internal error ({type(exc).__name__}); see the server log",
        )
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the RPC with the status that `exc` maps to."""
    context.abort_with_status(abort_status(exc))


def map_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method so that raised exceptions become gRPC statuses.

    Servicer methods raise; they never call context.abort() themselves.
    """

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return wrapper


def map_stream_errors(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """map_errors for a method that streams its responses (a generator)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return wrapper


ERROR_OF: dict[grpc.StatusCode, type[errors.ImageSearchError]] = {
    code: cls for cls, code in STATUS_OF.items()
}


_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_from_status(code: grpc.StatusCode | int, message: str) -> errors.ImageSearchError:
    """The imgsearch exception for a status (a code or its number) and its message."""
    if isinstance(code, int):
        code = _CODE_OF_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    error = ERROR_OF.get(code, errors.ImageSearchError)(message or code.name)
    error.code = code  # type: ignore[attr-defined]
    return error


def error_from_rpc(exc: grpc.RpcError) -> errors.ImageSearchError:
    """The imgsearch exception for a failed call, keeping the server's message."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_from_status(code, details)
