"""CIFAR-100, the source tutorial's data set, as ingest items through torchvision.

Ids are the dataset indices and labels the class names, as in the tutorial. torchvision finds a
local copy under ROOT (cifar-100-python/ or the .tar.gz) or downloads it when there is a network;
with neither, the error says what to put where. Needs torchvision (the [embedder] extra).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from imgsearch.client import IngestItem
from imgsearch.errors import FailedPrecondition

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def load_cifar100(root: Path, *, split: str = "train", download: bool = True) -> Any:
    try:
        from torchvision.datasets import CIFAR100
    except ImportError:
        raise FailedPrecondition(
            "--cifar100 reads the data set through torchvision: pip install 'imgsearch[embedder]'"
        ) from None
    if split not in ("train", "test"):
        raise FailedPrecondition(f"split must be train or test, got {split!r}")
    try:
        return CIFAR100(str(root), train=split == "train", download=download)
    except Exception as exc:  # not there, corrupt, or no network: one answer for the user
        raise FailedPrecondition(
            f"CIFAR-100 is not under {root} and could not be downloaded "
            f"({type(exc).__name__}: {str(exc)[:120]}). Put cifar-100-python.tar.gz from {URL} "
            f"(or its extracted cifar-100-python/ folder) in {root}"
        ) from None


def cifar100_item(dataset: Any, split: str, index: int) -> IngestItem:
    """Image `index` as a PNG (lossless: its vector is that of the dataset's own pixels)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(dataset.data[index]).save(out, "PNG")
    return IngestItem(
        id=index,
        image=out.getvalue(),
        label=dataset.classes[dataset.targets[index]],
        uri=f"cifar100:{split}/{index}",
    )
