"""A picture of a search: the query, then its hits, each with its label and distance beneath
(like the tutorial's 4×5 grid)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

TILE = 160
CAPTION = 34


def _tile(
    image: Image.Image | None, lines: Sequence[str], border: str | None = None
) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    if image is not None:
        thumb = ImageOps.contain(image.convert("RGB"), (TILE - 8, TILE - 8))
        tile.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    else:
        ImageDraw.Draw(tile).text((TILE // 2 - 30, TILE // 2), "(no image)", fill="grey")
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines):
        draw.text((4, TILE + 2 + 15 * i), line[:26], fill="black")
    if border:
        draw.rectangle((0, 0, TILE - 1, TILE - 1), outline=border, width=3)
    return tile


def load_image(uri: str) -> Image.Image | None:
    """The picture at a stored uri when it is a readable local file, else None."""
    path = Path(uri.removeprefix("file://"))
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.seek(0)
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError):
        return None


def search_grid(
    query: Image.Image | None,
    query_caption: str,
    hits: Sequence[tuple[Image.Image | None, str, float]],
    columns: int = 5,
    warning: str = "",
    first_caption: str = "query",
) -> Image.Image:
    """query first (outlined), then one tile per (image, label, distance)."""
    tiles = [_tile(query, [first_caption, query_caption], border="red")]
    tiles += [_tile(img, [label, f"d={distance:.4g}"]) for img, label, distance in hits]
    rows = (len(tiles) + columns - 1) // columns
    banner = 20 if warning else 0
    grid = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION) + banner), "white")
    if warning:
        ImageDraw.Draw(grid).text((4, 4), warning, fill="red")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * TILE, banner + (i // columns) * (TILE + CAPTION)))
    return grid
