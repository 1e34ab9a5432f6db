"""Uniform borders are cut before the GeM head sees a picture: a screenshot's frame and title
bar, letterboxing; a photo, and a picture that is mostly flat, are left as they are."""

from __future__ import annotations

import numpy as np
from PIL import Image

from embedder import probes
from embedder.borders import trim_uniform_borders
from embedder.model import EmbeddingModel, ModelSpec
from imgsearch.photos import textured_photo


def test_a_screenshot_loses_its_frame_and_title_bar() -> None:
    picture = textured_photo(11, (500, 375))
    trimmed = trim_uniform_borders(probes.screenshot(picture))
    assert trimmed.size == picture.size
    assert np.array_equal(np.asarray(trimmed), np.asarray(picture))


def test_letterboxing_is_cut_and_a_photo_is_left_whole() -> None:
    picture = textured_photo(12, (400, 300))
    boxed = Image.new("RGB", (400, 420), (0, 0, 0))
    boxed.paste(picture, (0, 60))
    assert trim_uniform_borders(boxed).size == (400, 300)
    assert trim_uniform_borders(picture) is picture


def test_a_mostly_flat_picture_is_not_trimmed_to_a_sliver() -> None:
    flat = Image.new("RGB", (400, 300), (120, 130, 140))
    flat.paste(textured_photo(13, (40, 30)), (180, 135))
    assert trim_uniform_borders(flat) is flat


def test_only_the_gem_head_trims_and_its_screenshot_vector_is_the_pictures_own() -> None:
    picture = textured_photo(14, (500, 375))
    shot = probes.screenshot(picture)
    gem = EmbeddingModel(ModelSpec(weights="random", head="gem", device="cpu"))
    logits = EmbeddingModel(ModelSpec(weights="random", head="logits", device="cpu"))
    assert np.array_equal(gem.preprocess(shot), gem.preprocess(picture))
    assert not np.array_equal(logits.preprocess(shot), logits.preprocess(picture))
    assert "trim uniform borders" in gem.info.preprocessing
    assert "trim" not in logits.info.preprocessing
