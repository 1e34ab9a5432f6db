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
from imgsearch.errors import ModelLoadError

HEADS = ("logits", "gem")
RUNTIMES = ("auto", "torch", "onnx")
# A model of several heads ("logits,gem") computes them all in one forward pass, over the
# tutorial's input: its GeM vector is pooled from the same map the logits come from, without
# the standalone GeM head's trimmed borders and standardised input (those would need a pass of
# their own, doubling the cost per image).
SHARED_PASS_GEM = "gem/shared-pass"


def parse_heads(text: str) -> tuple[str, ...]:
    """ "logits" → ("logits",); "logits,gem" → ("logits", "gem"): the heads a model serves,
    the first being the one its single `vector` carries."""
    heads = tuple(part.strip() for part in text.split(","))
    unknown = [head for head in heads if head not in HEADS]
    if unknown or not heads:
        named = ", ".join(map(repr, unknown)) or repr(text)
        raise ModelLoadError(
            f"unknown head {named}; use one of {', '.join(HEADS)}, or "
            "several of them separated by commas (logits,gem: both from one forward pass)"
        )
    if len(set(heads)) != len(heads):
        raise ModelLoadError(f"head {text!r} names a head twice")
    return heads


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
class HeadInfo:
    """One of the vectors a model computes for each image: columns [start, start + dim) of the
    model's output."""

    name: str  # "logits" or "gem", as requests and results name it
    kind: str  # "logits", "gem" (its own pass) or SHARED_PASS_GEM
    dim: int
    fingerprint: str
    preprocessing: str
    start: int = 0

    def of(self, vectors: np.ndarray) -> np.ndarray:
        """This head's part of the model's output (N×total or a single row)."""
        return vectors[..., self.start : self.start + self.dim]


@dataclass(frozen=True)
class ModelInfo:
    model: str
    weights_source: str  # imagenet | checkpoint | random
    weights: str  # what exactly: the enum name, the file, or the seed
    head: str  # the first head's name
    dim: int  # the first head's
    preprocessing: str
    device: str
    runtime: str
    fingerprint: str  # the first head's
    # Every head, the first as above; the model's output is their vectors side by side. Left
    # out: the one head the fields above describe.
    heads: tuple[HeadInfo, ...] = ()

    def __post_init__(self) -> None:
        if not self.heads:
            one = HeadInfo(self.head, self.head, self.dim, self.fingerprint, self.preprocessing)
            object.__setattr__(self, "heads", (one,))

    @property
    def width(self) -> int:
        """Columns of the model's output: every head's vector side by side."""
        return sum(head.dim for head in self.heads)


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
        """Vectors (N×width float32: every head's, side by side) for a batch of inputs
        (N×3×224×224 float32)."""
        ...

    def warm_up(self, batch_size: int) -> None:
        """Run the shapes that will be served once, so the first request pays no set-up."""
        ...
