"""The exceptions of imgsearch, shared by the services and the client.

    ImageSearchError
     ├── InvalidArgument      INVALID_ARGUMENT     the request is wrong; fix it and retry
     ├── NotFound             NOT_FOUND            no such collection or item
     ├── AlreadyExists        ALREADY_EXISTS       the collection name is taken
     ├── FailedPrecondition   FAILED_PRECONDITION  the system is not in a state to do this
     ├── ResourceExhausted    RESOURCE_EXHAUSTED   a size or rate limit was crossed
     ├── Unavailable          UNAVAILABLE          a dependency is down; retry later
     │    └── ServiceUnreachable                     (client) no connection to a service at all
     └── DeadlineExceeded     DEADLINE_EXCEEDED    the work did not finish in time

Services raise these from their plain-Python cores; one table (imgsearch._status) turns them into
gRPC status codes on the way out and back into the same classes in the client.
"""

from __future__ import annotations


class ImageSearchError(Exception):
    """Base class of every error imgsearch raises on purpose."""


class InvalidArgument(ImageSearchError):
    pass


class NotFound(ImageSearchError):
    pass


class AlreadyExists(ImageSearchError):
    pass


class FailedPrecondition(ImageSearchError):
    pass


class ResourceExhausted(ImageSearchError):
    pass


class Unavailable(ImageSearchError):
    pass


class ServiceUnreachable(Unavailable):
    """The client could not connect to a service: its message names the service, the address
    and what to run."""


class DeadlineExceeded(ImageSearchError):
    pass


class Unauthenticated(ImageSearchError):
    pass


class PermissionDenied(ImageSearchError):
    pass
