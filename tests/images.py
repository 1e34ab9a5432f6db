"""Generated test images: photo-like pictures (gradients and shapes, so JPEG behaves as on real
photos) in every mode and format the embedder must handle, and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


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
