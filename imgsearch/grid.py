"""A picture of a search, laid out as the tutorial shows one: the query on the left, its hits in
a grid of five columns beside it (top-20 is 4 rows × 5), each hit with its rank, label, file name
and distance beneath. Sizes scale with `tile`; text is a scalable font sized to the tile."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 200  # pixels per hit thumbnail
COLUMNS = 5
GAP_FRACTION = 0.06  # space between tiles, as a fraction of the tile
QUERY_OUTLINE = "#d62728"
WARNING_COLOUR = "#d62728"


@dataclass(frozen=True)
class GridHit:
    image: Image.Image | None  # None: the stored uri is not a readable file here
    label: str
    distance: float
    name: str = ""  # the file name, when the hit has a uri


def load_image(uri: str) -> Image.Image | None:
    """The picture at a stored uri when it is a readable local file, else None."""
    path = Path(uri.removeprefix("file://"))
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.seek(0)
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError):
        return None


def name_of(uri: str) -> str:
    return PurePosixPath(uri.removeprefix("file://")).name if uri else ""


Box = tuple[int, int, int]  # x, y, size: a square
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class Layout:
    size: tuple[int, int]
    query: Box
    hits: list[Box]  # by rank: left to right, then top to bottom
    banner: int  # height of the warning line at the top, 0 without one
    line: int  # height of a caption line
    gap: int


def grid_layout(
    hits: int, *, columns: int = COLUMNS, tile: int = TILE, warning: bool = False
) -> Layout:
    """Where everything goes: the query left, twice a hit's size when there are two rows of
    hits or more; the hits in `columns` columns beside it (fewer when there are fewer hits)."""
    line = _line_height(_fonts(tile)[0])
    columns = max(1, min(columns, hits))
    gap = max(4, int(tile * GAP_FRACTION))
    caption = 3 * line + gap // 2
    rows = max(1, -(-hits // columns))
    query_size = 2 * tile + gap if rows >= 2 else tile
    banner = 2 * line if warning else 0
    top = gap + banner
    left = gap + query_size + 2 * gap
    boxes = []
    for rank in range(hits):
        row, column = divmod(rank, columns)
        boxes.append((left + column * (tile + gap), top + row * (tile + caption + gap), tile))
    grid_width = columns * tile + (columns - 1) * gap
    grid_height = rows * (tile + caption) + (rows - 1) * gap
    width = left + grid_width + gap
    height = top + max(query_size + 2 * line + gap, grid_height) + gap
    return Layout((width, height), (gap, top, query_size), boxes, banner, line, gap)


def search_grid(
    query: Image.Image | None,
    query_caption: str,
    hits: Sequence[GridHit],
    *,
    columns: int = COLUMNS,
    tile: int = TILE,
    warning: str = "",
    first_caption: str = "query",
) -> Image.Image:
    """The query (outlined) left of its hits, each captioned with rank, label, file name and
    distance; `warning` as a banner across the top."""
    font, small = _fonts(tile)
    layout = grid_layout(len(hits), columns=columns, tile=tile, warning=bool(warning))
    line, gap = layout.line, layout.gap
    sheet = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(sheet)
    if warning:
        text = _fit(draw, warning, font, layout.size[0] - 2 * gap)
        draw.text((gap, gap), text, fill=WARNING_COLOUR, font=font)

    x, y, size = layout.query
    _paste(sheet, query, x, y, size, small)
    outline = max(2, tile // 60)
    draw.rectangle((x - 2, y - 2, x + size + 1, y + size + 1), outline=QUERY_OUTLINE, width=outline)
    text_y = y + size + gap // 2
    for text, face in ((first_caption, font), (query_caption, small)):
        draw.text((x, text_y), _fit(draw, text, face, size), fill="black", font=face)
        text_y += line

    for rank, (hit, (x, y, size)) in enumerate(zip(hits, layout.hits, strict=True), 1):
        _paste(sheet, hit.image, x, y, size, small)
        captions = [
            (f"{rank}. {hit.label or '(no label)'}", font, "black"),
            (hit.name, small, "#444444"),
            (f"distance {hit.distance:.4g}", small, "#444444"),
        ]
        text_y = y + size + gap // 4
        for text, face, colour in captions:
            if text:
                draw.text((x, text_y), _fit(draw, text, face, size), fill=colour, font=face)
            text_y += line
    return sheet


def _paste(
    sheet: Image.Image,
    image: Image.Image | None,
    x: int,
    y: int,
    size: int,
    font: Font,
) -> None:
    """The image scaled to fit a size×size square at (x, y), centred on a light background."""
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((x, y, x + size - 1, y + size - 1), fill="#f2f2f2")
    if image is None:
        text = "(no image here)"
        width = draw.textlength(text, font=font)
        draw.text((x + (size - width) / 2, y + size / 2), text, fill="grey", font=font)
        return
    thumb = ImageOps.contain(image.convert("RGB"), (size, size))
    sheet.paste(thumb, (x + (size - thumb.width) // 2, y + (size - thumb.height) // 2))


def _fonts(tile: int) -> tuple[Font, Font]:
    """Pillow's own scalable font (no system fonts needed), for labels and for the rest."""
    return (
        ImageFont.load_default(size=max(11, tile // 13)),
        ImageFont.load_default(size=max(10, tile // 15)),
    )


def _line_height(font: Font) -> int:
    left, top, right, bottom = font.getbbox("Ayg")
    return int(bottom - top) + 6


def _fit(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: Font,
    width: float,
) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
