"""What the commands show a person or a script: hits as a table or JSON, the picture grid of a
query and its hits, groups of near-duplicates, and the warning that results mean nothing when
the embedder runs on random weights."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgsearch.errors import ImageSearchError
from imgsearch.records import DuplicateGroup, DuplicateMember, Hit

RANDOM_WEIGHTS_WARNING = (
    "WARNING: the embedder runs on RANDOM weights: these results mean nothing about image "
    "content (fetch the ImageNet weights for real results)"
)


def show_hits(hits: Sequence[Hit], *, as_json: bool = False, random_weights: bool = False) -> None:
    if as_json:
        print(json.dumps({"hits": hits_json(hits), "random_weights": random_weights}, indent=2))
        return
    if random_weights:
        print(RANDOM_WEIGHTS_WARNING)
    print(f"{'rank':>4}  {'id':>20}  {'label':<16}  {'distance':>10}  uri")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.id:>20}  {hit.label[:16]:<16}  {hit.distance:>10.4f}  {hit.uri}")
    if not hits:
        print("(no hits: the collection is empty or nothing matches the filter)")


def show_several(
    images: Sequence[str],
    outcomes: Sequence[Sequence[Hit] | ImageSearchError],
    *,
    as_json: bool,
    random_weights: bool,
) -> None:
    """Each query image's hits (or why it has none), keyed by the file as given."""
    if as_json:
        queries: dict[str, Any] = {}
        for image, outcome in zip(images, outcomes, strict=True):
            if isinstance(outcome, ImageSearchError):
                queries[image] = {"error": str(outcome)}
            else:
                queries[image] = {"hits": hits_json(outcome)}
        print(json.dumps({"queries": queries, "random_weights": random_weights}, indent=2))
        return
    if random_weights:
        print(RANDOM_WEIGHTS_WARNING)
    for image, outcome in zip(images, outcomes, strict=True):
        print(f"\n== {image}")
        if isinstance(outcome, ImageSearchError):
            print(f"  failed: {outcome}")
        else:
            show_hits(outcome)


def hits_json(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {"rank": r, "id": h.id, "label": h.label, "distance": h.distance,
         "uri": h.uri, "attributes": h.attributes}
        for r, h in enumerate(hits, 1)
    ]  # fmt: skip


def write_grid(
    out: str, query_image: Any, query_caption: str, hits: Sequence[Hit], random_weights: bool
) -> None:
    """The query beside its hits, as the tutorial draws them, written to `out`."""
    from imgsearch.grid import search_grid

    grid = search_grid(
        query_image,
        query_caption,
        _tiles(hits),
        warning="RANDOM WEIGHTS: these results say nothing about image content"
        if random_weights
        else "",
    )
    grid.save(out)
    print(f"wrote {Path(out).resolve()}")


def open_picture(data: bytes) -> Any:
    """The picture in `data` as RGB, or None when it cannot be read."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except OSError:
        return None


def show_duplicates(
    groups: Sequence[DuplicateGroup], max_distance: float, *, as_json: bool
) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "max_distance": max_distance,
                    "groups": [
                        [{"id": m.id, "label": m.label, "uri": m.uri, "distance": m.distance}
                         for m in group.members]
                        for group in groups
                    ],
                },
                indent=2,
            )
        )  # fmt: skip
        return
    items = sum(len(group.members) for group in groups)
    print(f"{len(groups)} groups of near-duplicates ({items} items) within {max_distance:g}")
    for number, group in enumerate(groups, 1):
        print(f"group {number}: {len(group.members)} items")
        for m in group.members:
            print(f"  {m.id:>20}  {m.label[:16]:<16}  {m.distance:>10.4f}  {m.uri}")


def write_duplicate_sheets(folder: Path, groups: Sequence[DuplicateGroup]) -> None:
    """One picture per group: its first member, then the others with their distance to it."""
    from imgsearch.grid import load_image, name_of, search_grid

    folder.mkdir(parents=True, exist_ok=True)
    for number, group in enumerate(groups, 1):
        first, *rest = group.members
        sheet = search_grid(
            load_image(first.uri) if first.uri else None,
            name_of(first.uri) or f"id {first.id}",  # the file name is what a person knows
            _tiles(rest),
            first_caption=f"group {number}",
        )
        sheet.save(folder / f"group-{number:04d}.png")
    print(f"wrote {len(groups)} sheets to {folder.resolve()}")


def _tiles(found: Sequence[Hit | DuplicateMember]) -> list[Any]:
    """Grid tiles of hits or group members: picture (from the stored uri), label, distance."""
    from imgsearch.grid import GridHit, load_image, name_of

    return [
        GridHit(load_image(f.uri) if f.uri else None, f.label, f.distance, name_of(f.uri))
        for f in found
    ]
