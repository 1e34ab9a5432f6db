"""The result grid: the query left of its hits, top-20 as 4 rows of 5 as the tutorial draws it,
captions in a font that grows with the tiles."""

from __future__ import annotations

from PIL import Image

from imgsearch.grid import GridHit, grid_layout, search_grid


def _colour(rank: int) -> tuple[int, int, int]:
    return (rank * 12 % 256, 255 - rank * 9 % 256, rank * 37 % 256)


def _hits(count: int) -> list[GridHit]:
    return [
        GridHit(
            Image.new("RGB", (320, 240), _colour(rank)), f"label{rank}", rank / 10, f"{rank}.jpg"
        )
        for rank in range(count)
    ]


def test_top_20_is_four_rows_of_five_beside_the_query() -> None:
    layout = grid_layout(20)
    rows = sorted({y for _, y, _ in layout.hits})
    columns = sorted({x for x, _, _ in layout.hits})
    assert (len(rows), len(columns)) == (4, 5)
    assert layout.hits == sorted(layout.hits, key=lambda box: (box[1], box[0]))  # ranked in rows
    query_x, query_y, query_size = layout.query
    assert all(x > query_x + query_size for x, _, _ in layout.hits)  # beside, on the left
    assert query_size > layout.hits[0][2]  # and larger than a hit


def test_each_hit_is_drawn_in_its_place_in_rank_order() -> None:
    query = Image.new("RGB", (300, 300), (250, 250, 0))
    sheet = search_grid(query, "q.jpg", _hits(20))
    layout = grid_layout(20)
    assert sheet.size[0] == layout.size[0]
    x, y, size = layout.query
    assert sheet.getpixel((x + size // 2, y + size // 2)) == (250, 250, 0)
    for rank, (x, y, size) in enumerate(layout.hits):
        assert sheet.getpixel((x + size // 2, y + size // 2)) == _colour(rank)


def test_fewer_hits_make_a_narrower_grid_and_a_missing_picture_still_gets_its_tile() -> None:
    three = grid_layout(3)
    assert len({x for x, _, _ in three.hits}) == 3
    assert three.size[0] < grid_layout(20).size[0]
    hits = [GridHit(None, "gone", 0.5, "deleted.jpg"), *_hits(2)]
    sheet = search_grid(None, "q.jpg", hits)
    assert sheet.size[0] == three.size[0]


def test_the_grid_and_its_text_scale_with_the_tile() -> None:
    small = search_grid(None, "q.jpg", _hits(20), tile=120)
    large = search_grid(None, "q.jpg", _hits(20), tile=300)
    assert large.size[0] > 2 * small.size[0]
    # The caption band (rows below a tile's picture holding dark text) is taller with the tile.
    assert _caption_height(large, 300) > _caption_height(small, 120) * 1.5


def test_a_warning_is_a_banner_above_everything() -> None:
    plain = grid_layout(20)
    warned = grid_layout(20, warning=True)
    assert warned.banner > 0 and warned.size[1] == plain.size[1] + warned.banner
    assert warned.query[1] > plain.query[1]


def _caption_height(sheet: Image.Image, tile: int) -> int:
    """Pixel rows under the first hit's picture that hold dark (text) pixels."""
    layout = grid_layout(20, tile=tile)
    x, y, size = layout.hits[0]
    grey = sheet.convert("L")
    dark_rows = [
        row
        for row in range(y + size, min(sheet.size[1], y + size + size))
        if any(grey.getpixel((column, row)) < 128 for column in range(x, x + size))
    ]
    return dark_rows[-1] - dark_rows[0] if dark_rows else 0
