"""Cut a picture's uniform borders: the frame, padding and title bar of a screenshot, the mat of
a scanned print, letterboxing. The same picture with and without them is the same picture, but
the model sees a border as content (bench/quality.py: a screenshot found its original first
for 0.155 of pictures through the GeM head without this, 1.000 with it).

Applied by the GeM head only: the logits head keeps the tutorial's preprocessing exactly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Grey levels: a row or column this flat is a border, not the picture (sensor noise alone
# gives a photo's flattest rows several levels).
UNIFORM_DEVIATION = 3.0


def trim_uniform_borders(image: Image.Image) -> Image.Image:
    """The picture without its uniform outer rows and columns; unchanged when that would leave
    under a quarter of its width or height (a mostly flat picture is not all border)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    top, bottom = _inner_span(grey.std(axis=1) < UNIFORM_DEVIATION)
    if bottom - top < grey.shape[0] // 4:
        return image
    # Columns are judged within the remaining rows: a frame's side columns run through a title
    # bar of another colour, and are uniform only beside the picture.
    left, right = _inner_span(grey[top:bottom].std(axis=0) < UNIFORM_DEVIATION)
    if right - left < grey.shape[1] // 4:
        return image
    if (top, bottom, left, right) == (0, grey.shape[0], 0, grey.shape[1]):
        return image
    return image.crop((left, top, right, bottom))


def _inner_span(uniform: np.ndarray) -> tuple[int, int]:
    """The span between the leading and trailing runs of True."""
    start, stop = 0, len(uniform)
    while start < stop and uniform[start]:
        start += 1
    while stop > start and uniform[stop - 1]:
        stop -= 1
    return start, stop
