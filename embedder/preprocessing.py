"""The model's input, computed with Pillow and numpy alone: the source tutorial's torchvision
preprocessing (Resize 256, CenterCrop 224, ToTensor, Normalize) reproduced operation for
operation, so the torch and the torch-free embedders feed their networks the same numbers
(tests/test_embedder_preprocessing.py compares them with torchvision's own transform).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from embedder.borders import trim_uniform_borders

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE = 256
CROP = 224
PREPROCESSING = (
    f"RGB; Resize({RESIZE}, bilinear, antialias); CenterCrop({CROP}); ToTensor; "
    f"Normalize(mean={list(IMAGENET_MEAN)}, std={list(IMAGENET_STD)})"
)
# Before the shared preprocessing, the GeM head's pictures lose their uniform borders.
GEM_PREPROCESSING = "trim uniform borders (embedder.borders); " + PREPROCESSING

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)

Prepare = Callable[[Image.Image], np.ndarray]


def preprocess(image: Image.Image) -> np.ndarray:
    """An RGB PIL image → the normalised 3×224×224 float32 array."""
    width, height = image.size
    # Resize(256): the short side to 256, the long side scaled and truncated, as torchvision.
    if width <= height:
        size = (RESIZE, int(RESIZE * height / width))
    else:
        size = (int(RESIZE * width / height), RESIZE)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    # CenterCrop(224): torchvision rounds the offsets half to even, as Python's round does.
    top = int(round((size[1] - CROP) / 2.0))
    left = int(round((size[0] - CROP) / 2.0))
    image = image.crop((left, top, left + CROP, top + CROP))
    # Channels first, laid out so (contiguous, as torch's ToTensor makes it and as ONNX
    # Runtime reads it); copying the bytes is cheaper than copying the floats later.
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    # ToTensor then Normalize, each in float32 as torch computes them.
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    normalised: np.ndarray = (scaled - _MEAN) / _STD
    return normalised


def preprocess_gem(image: Image.Image) -> np.ndarray:
    """The GeM head's input: the picture without its uniform borders, then `preprocess`."""
    return preprocess(trim_uniform_borders(image))


def for_head(head: str) -> Prepare:
    """The preprocessing a head's vectors are computed through."""
    return preprocess_gem if head == "gem" else preprocess


def description(head: str) -> str:
    return GEM_PREPROCESSING if head == "gem" else PREPROCESSING


def stack(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Inputs of single images → one N×3×224×224 batch."""
    return np.stack(inputs)
