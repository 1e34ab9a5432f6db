"""A labelled image set made on the spot, so the demo and the tests work offline: each label is
a scene type (its palette, shapes and layout); each image a different instance of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABELS = (
    "sunset", "forest", "ocean", "desert", "snow",
    "city", "meadow", "night", "autumn", "coral",
)  # fmt: skip


def scene(label_index: int, instance: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Image `instance` of scene type `label_index`: a sky/ground gradient in the label's
    palette, with shapes whose kind, count and placement vary per instance."""
    palette = np.random.default_rng(1000 + label_index)
    sky, ground, accent = (palette.integers(0, 256, size=3) for _ in range(3))
    rng = np.random.default_rng(label_index * 100_003 + instance)
    width, height = size
    horizon = int(height * rng.uniform(0.35, 0.65))
    y = np.arange(height, dtype=np.float32)[:, None, None]
    top = sky * (1 - 0.5 * y / height)
    bottom = ground * (0.6 + 0.4 * y / height)
    pixels = np.where(y < horizon, top, bottom) * np.ones((1, width, 1), dtype=np.float32)
    pixels += rng.normal(0, 6, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(8, 40))
        jitter = rng.integers(-30, 30, size=3)
        colour = tuple(int(c) for c in np.clip(accent + jitter, 0, 255))
        box = (cx - r, cy - r, cx + r, cy + r)
        if label_index % 3 == 0:
            draw.ellipse(box, fill=colour)
        elif label_index % 3 == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def write_dataset(root: Path, per_label: int = 20, labels: int = 10) -> list[Path]:
    """JPEGs under root/<label>/<label>_<n>.jpg; returns their paths."""
    paths = []
    for li, label in enumerate(LABELS[:labels]):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            path = folder / f"{label}_{n:03d}.jpg"
            if not path.exists():
                scene(li, n).save(path, "JPEG", quality=90)
            paths.append(path)
    return paths
