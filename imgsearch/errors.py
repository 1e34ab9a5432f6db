"""The exceptions of imgsearch, shared by the services, the client and the command line.

    ImageSearchError
     ├── InvalidArgument       INVALID_ARGUMENT     the request is wrong; fix it and retry
     │    └── UnsupportedType                         (page) an upload that is not a picture
     ├── NotFound              NOT_FOUND            no such collection or item
     ├── AlreadyExists         ALREADY_EXISTS       the collection name is taken
     ├── FailedPrecondition    FAILED_PRECONDITION  the system is not in a state to do this
     ├── ResourceExhausted     RESOURCE_EXHAUSTED   a size or rate limit was crossed
     │    ├── MessageTooLarge                         (servers) a request message over the limit
     │    └── UploadTooLarge                          (page) an upload over --max-upload-mb
     ├── Unavailable           UNAVAILABLE          a dependency is down; retry later
     │    └── ServiceUnreachable                      (client) no connection to a service at all
     ├── DeadlineExceeded      DEADLINE_EXCEEDED    the work did not finish in time
     ├── Unauthenticated       UNAUTHENTICATED      no token, or one the server does not know
     ├── PermissionDenied      PERMISSION_DENIED    a read-only token asked to change data
     ├── DetailedError         (the wrapped error's) an error with a protobuf detail attached
     ├── StartupError                               a server or the local stack cannot start
     │    ├── ConfigError                             a setting, a TLS file or a tokens file
     │    ├── ModelLoadError                          the model or its weights cannot be had
     │    └── EmbeddedDatabaseError                   the embedded PostgreSQL cannot start
     └── MissingExtra          (also ImportError)   a part whose extra is not installed

Services raise these from their plain-Python cores; one table (imgsearch._status) turns them into
gRPC status codes on the way out and back into the same classes in the client. Startup errors
never cross the wire: the console scripts and `imgsearch` print them and exit with status 2.
Library code raises; only those entry points exit.
"""

from __future__ import annotations

from typing import Any


class ImageSearchError(Exception):
    """Base class of every error imgsearch raises on purpose."""


class InvalidArgument(ImageSearchError):
    """The request is wrong (a bad value, a malformed image); the message says which part."""


class UnsupportedType(InvalidArgument):
    """An upload to the search page that is not of a picture type the page takes."""


class NotFound(ImageSearchError):
    """No such collection or item."""


class AlreadyExists(ImageSearchError):
    """A collection of that name exists already."""


class FailedPrecondition(ImageSearchError):
    """The system is not in a state to do this (e.g. a collection of another model)."""


class ResourceExhausted(ImageSearchError):
    """A size, count or rate limit was crossed; the message names the limit."""


class MessageTooLarge(ResourceExhausted):
    """A request message over max_message_bytes: raised where a request stream is read, so the
    service can say which messages before it were taken."""


class UploadTooLarge(ResourceExhausted):
    """An upload to the search page over its --max-upload-mb."""


class Unavailable(ImageSearchError):
    """A dependency (the database, a replica) is down; retrying later may succeed."""


class ServiceUnreachable(Unavailable):
    """The client could not connect to a service: its message names the service, the address
    and what to run."""


class DeadlineExceeded(ImageSearchError):
    """The work did not finish within the call's deadline."""


class Unauthenticated(ImageSearchError):
    """The call carried no bearer token, or one the server does not know."""


class PermissionDenied(ImageSearchError):
    """The token may not do this: a read-only token asked to change data."""


class DetailedError(ImageSearchError):
    """Wraps an error with a protobuf message to attach as a rich-status detail (e.g. what an
    Upsert stream stored before it failed); it travels as the wrapped error's status."""

    def __init__(self, error: ImageSearchError, detail: Any) -> None:
        super().__init__(str(error))
        self.error = error
        self.detail = detail


class StartupError(ImageSearchError):
    """A server (or the local stack) cannot start as configured; the message says what to do."""


class ConfigError(StartupError):
    """A setting, a TLS file or a tokens file is wrong or unreadable."""


class ModelLoadError(StartupError):
    """The model cannot be served as configured (unknown name, missing weights, bad device)."""


class EmbeddedDatabaseError(StartupError):
    """The embedded database cannot start as configured (another engine's data directory)."""


class MissingExtra(ImageSearchError, ImportError):
    """A part of imgsearch was used whose optional extra is not installed; the message names the
    `pip install` that adds it."""
