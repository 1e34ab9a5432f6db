"""The model's input without torch (embedder.preprocessing) is torchvision's, number for number:
the torch embedder and the torch-free one compute the same vectors from the same pictures."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.model import reference_transform
from embedder.preprocessing import CROP, preprocess, preprocess_gem, stack
from imgsearch.photos import textured_photo

SIZES = [
    (640, 480),  # landscape
    (480, 640),  # portrait
    (256, 256),  # already at the short side: no resize
    (224, 224),  # smaller than the resize: scaled up
    (64, 48),  # much smaller
    (257, 255),  # odd margins: the crop offset rounds half to even
    (1023, 767),
    (1000, 333),  # panorama
    (300, 1000),
]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_input_equals_torchvisions_reference_transform_exactly(size) -> None:
    picture = textured_photo(sum(size), size)
    expected = reference_transform()(picture).numpy()
    got = preprocess(picture)
    assert got.dtype == np.float32 and got.shape == (3, CROP, CROP)
    assert np.array_equal(got, expected)


def test_the_gem_input_is_the_same_preprocessing_after_trimming_borders() -> None:
    picture = textured_photo(5, (400, 300))
    assert np.array_equal(preprocess_gem(picture), preprocess(picture))  # no border to trim
    framed = picture.crop((-20, -20, 420, 320))  # a black frame around it
    assert np.array_equal(preprocess_gem(framed), preprocess(picture))
    assert not np.array_equal(preprocess(framed), preprocess(picture))


def test_inputs_stack_into_one_contiguous_batch() -> None:
    batch = stack([preprocess(textured_photo(s, (320, 240))) for s in range(3)])
    assert batch.shape == (3, 3, CROP, CROP) and batch.flags.c_contiguous
