"""Image bytes → an upright 8-bit RGB PIL image, or a reason it cannot be one.

Everything a user may upload goes through here first, so it refuses early and says why: an
allowlist of formats, a byte cap, a pixel cap checked on the header before any pixel is decoded
(decompression bombs), and truncated or corrupt data. What it accepts it normalises the way a
person would expect to see the picture: EXIF orientation applied, first frame of an animation,
greyscale/CMYK/palette converted, transparency composited on white, 16-bit samples scaled.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgsearch.errors import InvalidArgument, ResourceExhausted

# Formats we decode; Pillow's own names. TIFF, PSD, EPS and friends carry far more attack
# surface than a search service needs.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})

DEFAULT_MAX_IMAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

# Pillow's own bomb check warns (or raises) on a global limit; ours is per decoder and checked
# first, so switch Pillow's off rather than have two limits disagree.
Image.MAX_IMAGE_PIXELS = None
# A truncated file must fail, not decode into grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodeLimits:
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Decode `data` into an RGB image. Raises InvalidArgument (not a usable image) or
    ResourceExhausted (over the byte or pixel limit), with a reason a person can act on."""
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ResourceExhausted(
            f"image is {len(data)} bytes; the limit is {limits.max_image_bytes} bytes "
            "(max_image_bytes)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Truncated File Read" / odd EXIF: we raise
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise InvalidArgument(
                    f"image format {image.format} is not accepted; use one of "
                    + ", ".join(sorted(ALLOWED_FORMATS))
                )
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise ResourceExhausted(
                    f"image is {width}×{height} = {width * height} pixels; the limit is "
                    f"{limits.max_image_pixels} pixels (max_image_pixels)"
                )
            if width == 0 or height == 0:
                raise InvalidArgument(f"image has no pixels ({width}×{height})")
            image.seek(0)  # animated: the first frame
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except (InvalidArgument, ResourceExhausted):
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(
            "data is not an image in a known format (" + ", ".join(sorted(ALLOWED_FORMATS)) + ")"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(f"image cannot be decoded: {_reason(exc)}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, transparency composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: scale 0..65535 onto 0..255 (Pillow's convert("L") would clip).
        samples = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        samples = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(samples * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
