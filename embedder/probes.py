"""The edits people make to photos (re-encoding, resizing, cropping, light, rotation, overlaid
text, screenshot padding), applied to generated photo-like pictures (imgsearch.photos): the
probes the embedder measures its duplicate distance on (embedder.calibration), and the corpus of
bench/quality.py and tests. No torch here."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

# Re-encoding and resizing live beside the generated pictures (the demo plants copies with them).
from imgsearch.photos import Edit, jpeg, resize


def centre_crop(keep: float) -> Edit:
    """Keep the centre `keep` of each side."""

    def edit(image: Image.Image) -> Image.Image:
        width, height = round(image.width * keep), round(image.height * keep)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        return image.crop((left, top, left + width, top + height))

    return edit


def brightness(factor: float) -> Edit:
    return lambda image: ImageEnhance.Brightness(image).enhance(factor)


def contrast(factor: float) -> Edit:
    return lambda image: ImageEnhance.Contrast(image).enhance(factor)


def rotate(degrees: float) -> Edit:
    """Rotated about the centre and cropped to the largest upright rectangle inside."""

    def edit(image: Image.Image) -> Image.Image:
        turned = image.rotate(degrees, resample=Image.Resampling.BICUBIC)
        angle = np.radians(abs(degrees))
        keep = 1 / (np.cos(angle) + np.sin(angle) * max(image.size) / min(image.size))
        return centre_crop(float(keep))(turned)

    return edit


def flip(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)


def overlaid_text(image: Image.Image) -> Image.Image:
    """A caption in a corner, like a watermark or a meme's line."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    size = max(10, image.height // 14)
    x, y = image.width // 20, image.height - 2 * size
    draw.text((x + 1, y + 1), "(c) imgsearch 2026", fill="black", font_size=size)
    draw.text((x, y), "(c) imgsearch 2026", fill="white", font_size=size)
    return out


def screenshot(image: Image.Image) -> Image.Image:
    """Shown on a screen and captured: a grey frame and a title bar around the picture."""
    pad, bar = image.width // 12, image.height // 10
    out = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad + bar), (236, 236, 236))
    ImageDraw.Draw(out).rectangle((0, 0, out.width, bar), fill=(60, 60, 70))
    out.paste(image, (pad, pad + bar))
    return out


# Every edit kind of the quality benchmark, each at a few strengths.
EDITS: dict[str, dict[str, Edit]] = {
    "jpeg": {f"q{q}": jpeg(q) for q in (50, 70, 90)},
    "resize": {f"{round(s * 100)}%": resize(s) for s in (0.5, 0.7, 0.9)},
    "crop": {f"{round(k * 100)}%": centre_crop(k) for k in (0.8, 0.9, 0.95)},
    "brightness": {f"{f:+.0%}": brightness(1 + f) for f in (-0.15, -0.08, 0.08, 0.15)},
    "contrast": {f"x{f}": contrast(f) for f in (0.8, 1.25)},
    "rotate": {f"{d:+d}deg": rotate(d) for d in (-5, -2, 2, 5)},
    "flip": {"horizontal": flip},
    "text": {"caption": overlaid_text},
    "screenshot": {"padded": screenshot},
}

# The edits the embedder calibrates its duplicate distance on: the everyday ones, at moderate
# strength (a flip or a 50% resize is a harder question than "is this the same picture").
CALIBRATION_EDITS: tuple[Edit, ...] = (
    jpeg(60),
    resize(0.7),
    centre_crop(0.9),
    brightness(1.12),
    brightness(0.88),
    contrast(1.2),
    rotate(3),
    overlaid_text,
)
