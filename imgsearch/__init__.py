"""imgsearch: reverse image search over gRPC — the thin client library and its public API.

    import imgsearch

    with imgsearch.ImageSearchClient("localhost:50051", "localhost:50052") as client:
        hits = client.search_image("query.jpg", 5, options=imgsearch.SearchOptions(labels=["cat"]))

Everything a caller needs is named here (`__all__`): the client, what its calls take and give
back (imgsearch.records), the region of a picture (Box), TLS and token settings, and every
error (imgsearch.errors). Importing this package never imports torch or a database driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imgsearch.errors import (
    AlreadyExists,
    ConfigError,
    DeadlineExceeded,
    EmbeddedDatabaseError,
    FailedPrecondition,
    ImageSearchError,
    InvalidArgument,
    MessageTooLarge,
    MissingExtra,
    ModelLoadError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceUnreachable,
    StartupError,
    Unauthenticated,
    Unavailable,
    UnsupportedType,
    UploadTooLarge,
)
from imgsearch.records import (
    CollectionInfo,
    CollectionStats,
    DuplicateGroup,
    DuplicateMember,
    HeadInfo,
    Hit,
    IndexInfo,
    IngestItem,
    IngestReport,
    ModelInfo,
    NamedVectorInfo,
    SearchOptions,
    StoredItem,
)
from imgsearch.regions import Box

if TYPE_CHECKING:
    from imgsearch._channel import ChannelSecurity
    from imgsearch.client import ImageSearchClient

__version__ = "0.1.0"

# gRPC reads its settings (GRPC_*) from the environment when it is first imported, so the names
# that need it load on first use: `imgsearch` (the command) sets what it needs before that.
_NEEDS_GRPC = {
    "ImageSearchClient": "imgsearch.client",
    "ChannelSecurity": "imgsearch._channel",
}

__all__ = [
    # the client
    "ImageSearchClient",
    "ChannelSecurity",
    # what its calls take and give back
    "Box",
    "CollectionInfo",
    "CollectionStats",
    "DuplicateGroup",
    "DuplicateMember",
    "HeadInfo",
    "Hit",
    "IndexInfo",
    "IngestItem",
    "IngestReport",
    "ModelInfo",
    "NamedVectorInfo",
    "SearchOptions",
    "StoredItem",
    # errors
    "AlreadyExists",
    "ConfigError",
    "DeadlineExceeded",
    "EmbeddedDatabaseError",
    "FailedPrecondition",
    "ImageSearchError",
    "InvalidArgument",
    "MessageTooLarge",
    "MissingExtra",
    "ModelLoadError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceUnreachable",
    "StartupError",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedType",
    "UploadTooLarge",
]


def __getattr__(name: str) -> Any:
    if name not in _NEEDS_GRPC:
        raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NEEDS_GRPC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
