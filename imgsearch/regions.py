"""A region of a picture, cut out before embedding: search by the part that matters (one object
in a photo, a picture inside a screenshot).

Coordinates are in the picture as it is displayed, after its EXIF orientation is applied (as
the embedder decodes it). A box that reaches past the picture is refused, not clipped: a
silently different region would give silently different hits.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from imgsearch.errors import InvalidArgument, ResourceExhausted

_UNREADABLE = (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError)


@dataclass(frozen=True)
class Box:
    """A region of a picture in pixels: its top-left corner (x, y), width and height."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0 or self.width <= 0 or self.height <= 0:
            raise InvalidArgument(
                f"box {self}: x and y must be >= 0 and width and height > 0 (pixels)"
            )

    @classmethod
    def parse(cls, text: str) -> Box:
        """A box from "x,y,width,height" in pixels."""
        parts = text.split(",")
        try:
            x, y, width, height = (int(part) for part in parts)
        except ValueError:
            raise InvalidArgument(
                f"box {text!r}: give four whole numbers of pixels, x,y,width,height"
            ) from None
        return cls(x, y, width, height)

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"


def crop(data: bytes, box: Box, max_pixels: int) -> bytes:
    """The region `box` of the encoded picture `data`, as a lossless PNG."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ResourceExhausted(
                    f"the picture is {image.width}x{image.height} pixels, over the limit of "
                    f"{max_pixels} to crop"
                )
            image = ImageOps.exif_transpose(image)
    except _UNREADABLE as exc:
        raise InvalidArgument(f"cannot crop a picture that cannot be read: {exc}") from None
    if box.x + box.width > image.width or box.y + box.height > image.height:
        raise InvalidArgument(
            f"box {box} (x,y,width,height) reaches past the picture, which is "
            f"{image.width}x{image.height} pixels"
        )
    region = image.crop((box.x, box.y, box.x + box.width, box.y + box.height))
    if region.mode not in ("RGB", "RGBA", "L", "LA"):
        region = region.convert("RGBA" if "A" in region.getbands() else "RGB")
    out = io.BytesIO()
    region.save(out, "PNG")
    return out.getvalue()


def query_image(image: bytes | str | Path, box: Box | None, max_pixels: int) -> bytes:
    """The bytes to embed for a query: the image (read from a path if one is given), cut to
    `box` when there is one. Raises InvalidArgument for a file that cannot be read."""
    if isinstance(image, (str, Path)):
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"{image}: {exc.strerror or exc}") from None
    else:
        data = image
    return data if box is None else crop(data, box, max_pixels)
