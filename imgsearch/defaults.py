"""Every default that more than one part of imgsearch relies on, defined once: the services'
ports, the default collection, gRPC message sizes, the search page's address and upload limit,
and where local data lives. The client, the CLI, the services, the local stack and the page all
read them from here."""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDER_PORT = 50051
SEARCHER_PORT = 50052
# What a client dials when told nothing else, and what a server binds (every interface).
EMBEDDER_ADDRESS = f"localhost:{EMBEDDER_PORT}"
SEARCHER_ADDRESS = f"localhost:{SEARCHER_PORT}"
EMBEDDER_BIND = f"[::]:{EMBEDDER_PORT}"
SEARCHER_BIND = f"[::]:{SEARCHER_PORT}"
# `imgsearch up` listens on loopback only.
LOCAL_HOST = "127.0.0.1"

# The collection used when a request or a command names none (the tutorial's one table).
COLLECTION = "images"

# The model the embedder serves unless told otherwise: the source tutorial's.
MODEL = "squeezenet1_1"
HEAD = "logits"  # the classifier's output; "gem" pools the last convolutional map
# What `imgsearch up` and `imgsearch demo` serve: both heads from one pass, so the collections
# they make keep the tutorial's logits and a GeM vector for duplicates with every item.
STACK_HEAD = "logits,gem"
WEIGHTS = "imagenet"
RUNTIME = "auto"  # ONNX Runtime on CPU when installed, else torch

# The largest gRPC message either side sends or accepts: 64 images of ~1 MB fit with room.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# The search page: loopback unless told otherwise, and pictures up to 20 MB (decimal, as the
# --max-upload-mb flag counts them).
WEB_ADDRESS = f"{LOCAL_HOST}:8080"
MAX_UPLOAD_BYTES = 20_000_000

# A deadline for every client call that has none of its own.
CALL_TIMEOUT_S = 60.0


def data_dir() -> Path:
    """Where the local stack and the embedded database keep their data: $XDG_DATA_HOME/imgsearch
    (~/.local/share/imgsearch when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imgsearch"
