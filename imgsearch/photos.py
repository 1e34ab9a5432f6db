"""Generated photo-like pictures: the demo's image set, the embedder's calibration probes
(embedder.probes), and the pictures of the tests and benchmarks. Flat shapes on flat colour make
near-identical CNN features; texture and noise are what real photographs give a model. Also the
two edits the demo's planted copies and the probes share: re-encoding and resizing."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw


def textured_photo(
    seed: int, size: tuple[int, int] = (500, 375), scene: int | None = None
) -> Image.Image:
    """A photo-like RGB picture: a lit two-part backdrop, fractal-noise texture at several scales
    (mostly in brightness, a little in colour), soft shapes that carry the texture too, a little
    blur and sensor noise.

    Pictures of one `scene` share a palette, a layout and a texture scale (like photos taken at
    one place); each seed varies the rest. Flat shapes on flat colour make near-identical CNN
    features; texture and noise are what real photographs give a model."""
    from PIL import ImageFilter

    look = np.random.default_rng(1_000_003 * (seed if scene is None else scene) + 7)
    rng = np.random.default_rng(seed)
    width, height = size
    palette = look.uniform(0, 255, size=(4, 3)).astype(np.float32)
    horizon = look.uniform(0.3, 0.7) + rng.normal(0, 0.05)
    octave_weights = look.dirichlet(np.ones(4)) * look.uniform(25, 80)

    texture = np.zeros((height, width, 3), np.float32)
    for octave, weight in enumerate(octave_weights):
        cells = 2 ** (octave + 2)
        grid = rng.standard_normal((cells, max(2, cells * width // height), 4), np.float32)
        # channel 0 drives brightness, the others a weaker colour shift
        grid = grid[..., :1] + 0.35 * grid[..., 1:]
        layer = Image.fromarray(np.uint8(np.clip(grid * 40 + 128, 0, 255)), "RGB")
        layer = layer.resize(size, Image.Resampling.BICUBIC)
        texture += (np.asarray(layer, np.float32) - 128) * (weight / 40)

    y = (np.arange(height, dtype=np.float32) / height)[:, None, None]
    x = (np.arange(width, dtype=np.float32) / width)[None, :, None]
    light = 0.75 + 0.5 * rng.uniform(-1, 1) * (x - 0.5) + 0.3 * rng.uniform(-1, 1) * (y - 0.5)
    backdrop = np.where(y < horizon, palette[0] + (palette[1] - palette[0]) * y, palette[2])
    image = Image.fromarray(np.uint8(np.clip(backdrop * light + texture, 0, 255)), "RGB")

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.03, 0.25) * width, rng.uniform(0.03, 0.25) * height
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=255)
    fill = palette[3] * rng.uniform(0.6, 1.3) + rng.normal(0, 20, size=3).astype(np.float32)
    shapes = Image.fromarray(np.uint8(np.clip(fill * light + 0.6 * texture[::-1], 0, 255)), "RGB")
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    image = Image.composite(shapes, image, mask)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    grain = rng.standard_normal((height, width, 1), np.float32) * rng.uniform(1, 6)
    return Image.fromarray(np.uint8(np.clip(np.asarray(image, np.float32) + grain, 0, 255)), "RGB")


Edit = Callable[[Image.Image], Image.Image]


def jpeg(quality: int) -> Edit:
    def edit(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")

    return edit


def resize(scale: float) -> Edit:
    def edit(image: Image.Image) -> Image.Image:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BICUBIC)

    return edit
