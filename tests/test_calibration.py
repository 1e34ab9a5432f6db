"""The duplicate distance the embedder calibrates at start-up: between edited copies and distinct
pictures when they are apart, well inside the distinct pictures when they overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedder.calibration import _l2, _threshold, calibrate
from embedder.model import EmbeddingModel, ModelSpec
from embedder.preprocessing import preprocess


def probes_with(copy_offset: float, spacing: float) -> np.ndarray:
    """(probes, 1 + edits, dim): originals `spacing` apart along the axes (so any two lie
    spacing·√2 apart), each edit `copy_offset` from its original."""
    originals = np.eye(6) * spacing
    rng = np.random.default_rng(0)
    edits = rng.normal(size=(6, 4, 6))
    edits *= copy_offset / np.linalg.norm(edits, axis=-1, keepdims=True)
    return np.concatenate([originals[:, None], originals[:, None] + edits], axis=1)


def test_apart_the_threshold_lies_between_copies_and_distinct_pictures() -> None:
    threshold, near, far = _threshold(probes_with(copy_offset=0.1, spacing=1.0), _l2)
    assert near == pytest.approx(0.1) and far == pytest.approx(math.sqrt(2))
    assert threshold == pytest.approx(math.sqrt(0.1 * math.sqrt(2)))


def test_overlapping_the_threshold_is_half_the_nearest_distinct_pair() -> None:
    threshold, near, far = _threshold(probes_with(copy_offset=3.0, spacing=1.0), _l2)
    assert near > far
    assert threshold == pytest.approx(math.sqrt(2) / 2)


def test_a_real_model_gets_a_positive_distance_and_says_how_it_was_measured() -> None:
    model = EmbeddingModel(ModelSpec(weights="random", head="gem", device="cpu"))

    def forward(batch: np.ndarray) -> np.ndarray:
        return model.forward(batch)

    distances = calibrate(forward, preprocess, probes=4)
    assert distances.l2 > 0 and 0 < distances.cosine < 1
    assert "4 generated probes x 8 edits" in distances.note
