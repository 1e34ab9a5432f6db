"""What the embedder accepts as an image, what it refuses, and how it normalises what it accepts."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from embedder.decode import DecodeLimits, decode_image
from imgsearch.errors import InvalidArgument, ResourceExhausted
from tests import images


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidArgument, "empty"),
        (
            bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
            InvalidArgument,
            "not an image",
        ),
        (images.jpeg(1)[:3000], InvalidArgument, "cannot be decoded"),
        (images.png_header_only(30000, 30000), ResourceExhausted, "max_image_pixels"),
        (images.png_bomb(), ResourceExhausted, "64000000 pixels"),
        (images.encode(images.photo(2, (64, 64)), "TIFF"), InvalidArgument, "TIFF is not accepted"),
    ],
    ids=["zero-bytes", "random-bytes", "truncated-jpeg", "30000x30000-header", "png-bomb", "tiff"],
)
def test_bad_images_are_refused_with_a_reason(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        decode_image(data)


def test_the_byte_limit_is_checked_before_decoding() -> None:
    data = images.jpeg(3)
    with pytest.raises(ResourceExhausted, match=f"{len(data)} bytes; the limit is 1000 bytes"):
        decode_image(data, DecodeLimits(max_image_bytes=1000))


def test_a_png_bomb_is_refused_without_decoding_its_pixels() -> None:
    # 8000×8000 1-bit: a few KB on disk, 64 MP (192 MB as RGB) decoded.
    data = images.png_bomb()
    assert len(data) < 100_000
    with pytest.raises(ResourceExhausted, match="limit is 50000000 pixels"):
        decode_image(data)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGB"])
def test_modes_without_transparency_become_the_same_rgb_pillow_gives(mode: str) -> None:
    source = images.photo(4, (120, 90)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = images.encode(source, fmt)
    assert np.array_equal(pixels(decode_image(data)), pixels(opened(data).convert("RGB")))


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (40, 30), (10, 200, 30, 0))  # fully transparent green
    rgba.paste((200, 10, 10, 255), (0, 0, 20, 30))  # opaque red left half
    decoded = pixels(decode_image(images.encode(rgba, "PNG")))
    assert (decoded[:, :20] == (200, 10, 10)).all()
    assert (decoded[:, 20:] == 255).all()


def test_a_palette_png_with_a_transparent_colour_is_composited_on_white() -> None:
    palette = Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    palette.paste(1, (10, 0, 20, 10))
    data = images.encode(palette, "PNG", transparency=0)
    decoded = pixels(decode_image(data))
    assert (decoded[:, :10] == 255).all()  # the transparent black became white
    assert (decoded[:, 10:] == (250, 0, 0)).all()


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    levels = np.linspace(0, 255, 64, dtype=np.uint16).reshape(8, 8)
    sixteen = Image.fromarray((levels * 257).astype(np.uint16))
    data = images.encode(sixteen, "PNG")
    assert opened(data).mode.startswith("I")
    decoded = pixels(decode_image(data))
    assert np.array_equal(decoded[..., 0], levels)
    assert np.array_equal(decoded[..., 0], decoded[..., 2])


def test_an_animated_gif_gives_its_first_frame() -> None:
    first = Image.new("RGB", (32, 32), (255, 0, 0))
    second = Image.new("RGB", (32, 32), (0, 0, 255))
    decoded = pixels(decode_image(images.animated_gif([first, second])))
    assert (np.abs(decoded - (255, 0, 0)) <= 2).all()


def test_exif_orientation_is_applied() -> None:
    upright = images.photo(5, (160, 90))
    data = images.with_exif_orientation(upright)
    decoded = decode_image(data)
    assert decoded.size == (160, 90)
    expected = ImageOps.exif_transpose(opened(data)).convert("RGB")
    assert np.array_equal(pixels(decoded), pixels(expected))
    # and it is the upright picture, up to JPEG loss
    assert np.abs(pixels(decoded) - pixels(upright)).mean() < 6
