"""What an embedder serves, without loading anything: the settings of a model to load
(`ModelSpec`), what a loaded one reports (`ModelInfo`), and what the server needs of it (`Model`).
No torch here: the embedder that serves an exported ONNX file imports this and never torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from imgsearch import defaults

HEADS = ("logits", "gem")
RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to serve, with which weights and head, where and how."""

    name: str = defaults.MODEL
    # "imagenet", "random", or a path to a saved state_dict.
    weights: str = defaults.WEIGHTS
    head: str = defaults.HEAD
    seed: int = 0  # for weights="random" only
    device: str = "auto"  # auto | cpu | cuda[:N]
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # auto: ONNX Runtime on CPU when installed (the fastest that keeps the vectors), else torch.
    runtime: str = defaults.RUNTIME


@dataclass(frozen=True)
class ModelInfo:
    model: str
    weights_source: str  # imagenet | checkpoint | random
    weights: str  # what exactly: the enum name, the file, or the seed
    head: str
    dim: int
    preprocessing: str
    device: str
    runtime: str
    fingerprint: str


class Model(Protocol):
    """A loaded embedding network as the server uses it: pictures in, vectors out."""

    info: ModelInfo

    @property
    def device_type(self) -> str:
        """ "cpu" or "cuda": what the batch size is chosen for."""
        ...

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB picture → this model's input (3×224×224 float32)."""
        ...

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Vectors (N×dim float32) for a batch of inputs (N×3×224×224 float32)."""
        ...

    def warm_up(self, batch_size: int) -> None:
        """Run the shapes that will be served once, so the first request pays no set-up."""
        ...
