"""Generated test images: photo-like pictures (gradients and shapes, so JPEG behaves as on real
photos) in every mode and format the embedder must handle, and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

from imgsearch.photos import textured_photo  # noqa: F401  (the tests' photo-like pictures)


def photo(seed: int, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """An RGB picture: a smooth two-colour gradient with a few filled shapes."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = rng.integers(0, 256, size=(2, 3))
    t = (x / max(width - 1, 1) + y / max(height - 1, 1)) / 2
    pixels = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (500, 375), quality: int = 90) -> bytes:
    return encode(photo(seed, size), "JPEG", quality=quality)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height RGB pixels, followed by a tiny bogus IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def png_bomb(side: int = 8000) -> bytes:
    """A valid 1-bit PNG of side×side pixels that compresses to a few kilobytes."""
    return encode(Image.new("1", (side, side)), "PNG", optimize=True)


def animated_gif(frames: list[Image.Image]) -> bytes:
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def with_exif_orientation(upright: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels are `upright` turned so that EXIF `orientation` (6: rotate
    90° clockwise to display) puts them back upright."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise by 90°
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())
