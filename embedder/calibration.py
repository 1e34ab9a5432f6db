"""The distance below which two pictures are the same picture, measured for the loaded model.

A distance scale depends on the model, its weights and its head (logits of random weights lie
closer together than those of ImageNet weights; GeM vectors are unit length), so no constant
serves them all. At start-up the embedder embeds a fixed set of generated photo-like probes and
everyday edits of each (embedder.probes), and takes the threshold between the two
distributions: distances from an edited copy to its original, and from one probe to the others
(probes come in pairs from the same scene: the near-misses that make duplicates hard).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedder.probes import CALIBRATION_EDITS
from embedder.spec import HeadInfo
from imgsearch.photos import textured_photo

logger = logging.getLogger(__name__)

PROBE_SIZE = (400, 300)
COPIES_QUANTILE = 0.95  # of edited copies, to their original: nearly all should be within
DISTINCT_QUANTILE = 0.01  # of distinct probes: nearly none should be within


@dataclass(frozen=True)
class DuplicateDistances:
    l2: float
    cosine: float
    note: str  # how they were measured, for GetModelInfo and the log


def calibrate(
    forward: Callable[[np.ndarray], np.ndarray],
    preprocess: Callable[..., np.ndarray],
    probes: int,
    batch_size: int = 16,
) -> DuplicateDistances:
    """Duplicate distances under L2 and cosine for the model behind `forward`."""
    started = time.monotonic()
    vectors = _probe_vectors(forward, preprocess, probes, batch_size)
    return _distances(vectors, time.monotonic() - started)


def calibrate_heads(
    forward: Callable[[np.ndarray], np.ndarray],
    preprocess: Callable[..., np.ndarray],
    probes: int,
    heads: Sequence[HeadInfo],
) -> dict[str, DuplicateDistances]:
    """Each head's duplicate distances, from one pass over the probes (a model of several heads
    computes them side by side)."""
    started = time.monotonic()
    vectors = _probe_vectors(forward, preprocess, probes, 16)
    seconds = time.monotonic() - started
    return {head.name: _distances(head.of(vectors), seconds, head.name) for head in heads}


def _probe_vectors(
    forward: Callable[[np.ndarray], np.ndarray],
    preprocess: Callable[..., np.ndarray],
    probes: int,
    batch_size: int,
) -> np.ndarray:
    """probes × (1 + edits) × width: each generated probe's vector, then its edits'."""
    tensors = []
    for seed in range(probes):
        original = textured_photo(seed, PROBE_SIZE, scene=seed // 2)
        tensors.append(preprocess(original))
        tensors += [preprocess(edit(original)) for edit in CALIBRATION_EDITS]
    batch = np.stack(tensors)
    vectors = np.concatenate(
        [forward(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
    ).astype(np.float64)
    return vectors.reshape(probes, 1 + len(CALIBRATION_EDITS), -1)


def _distances(vectors: np.ndarray, seconds: float, head: str = "") -> DuplicateDistances:
    probes = len(vectors)
    l2 = _threshold(vectors, _l2)
    cosine = _threshold(vectors / _norms(vectors), _cosine)
    note = (
        f"L2 {l2[0]:.4g} (edited copies' {COPIES_QUANTILE:.0%} quantile {l2[1]:.4g}, distinct "
        f"pictures' {DISTINCT_QUANTILE:.0%} quantile {l2[2]:.4g}), cosine {cosine[0]:.4g} "
        f"({cosine[1]:.4g} / {cosine[2]:.4g}); {probes} generated probes x "
        f"{len(CALIBRATION_EDITS)} edits, measured at start-up in {seconds:.1f} s"
    )
    if l2[1] >= l2[2]:
        note += (
            "; edited copies and distinct pictures overlap on this model: the threshold is "
            "half the nearest distinct probes' distance, favouring precision, and misses some "
            "edits"
        )
        logger.warning("duplicate distance%s: %s", f" of head {head}" if head else "", note)
    else:
        logger.info("duplicate distance%s: %s", f" of head {head}" if head else "", note)
    return DuplicateDistances(l2=l2[0], cosine=cosine[0], note=note)


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.norm(a - b, axis=-1))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(1 - np.sum(a * b, axis=-1))


def _threshold(
    vectors: np.ndarray, distance: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[float, float, float]:
    """(threshold, copies' high quantile, distinct pictures' low quantile). The threshold is
    their geometric mean when they are apart. When they overlap it is half the distance of the
    nearest two distinct probes: a collection of thousands holds distinct pairs nearer than any
    two of a few probes, and each one within the threshold is a false group (bench/quality.py:
    at the distinct probes' 1% quantile, pair precision fell to 0.02 on 3,200 items when groups
    were still joined transitively; at three quarters of it, 0.998)."""
    originals = vectors[:, 0]
    copies = distance(vectors[:, 1:], originals[:, None]).ravel()
    upper = np.triu_indices(len(originals), k=1)
    distinct = distance(originals[:, None], originals[None, :])[upper]
    near = float(np.quantile(copies, COPIES_QUANTILE))
    far = float(np.quantile(distinct, DISTINCT_QUANTILE))
    if near < far and near > 0:
        return math.sqrt(near * far), near, far
    return float(distinct.min()) / 2, near, far
