"""Finding pictures: `imgsearch search` (by image files, a region of them, or a stored id) and
`imgsearch duplicates` (groups of near-duplicates in a collection)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imgsearch.cli.options import (
    add_command,
    add_search_options,
    client_from,
    search_options_from,
)
from imgsearch.cli.output import (
    open_picture,
    show_duplicates,
    show_hits,
    show_several,
    write_duplicate_sheets,
    write_grid,
)
from imgsearch.client import ImageSearchClient
from imgsearch.errors import ImageSearchError
from imgsearch.records import Hit
from imgsearch.regions import Box, crop


def add_search(commands: Any) -> None:
    search = add_command(
        commands, "search", cmd_search, "the stored images nearest to an image or a stored id"
    )
    search.add_argument(
        "images", nargs="*", metavar="IMAGE", help="query image files, each with its own hits"
    )
    search.add_argument("--id", type=int, help="search with the stored item's own vector")
    search.add_argument(
        "--box",
        metavar="X,Y,W,H",
        help="search by this region of each image (pixels, after EXIF orientation)",
    )
    search.add_argument("--top-k", type=int, default=10, help="how many hits")
    add_search_options(search)
    search.add_argument("--json", action="store_true", help="print JSON for scripts")
    search.add_argument("--grid", metavar="PNG", help="write a picture of the query and its hits")


def add_duplicates(commands: Any) -> None:
    duplicates = add_command(
        commands, "duplicates", cmd_duplicates, "groups of near-duplicate images in the collection"
    )
    duplicates.add_argument(
        "--max-distance",
        type=float,
        help="items this close are duplicates; in a group every member is this close to every "
        "other, so a chain of near pictures is split, never merged past it (default: the "
        "embedder's suggestion for the head that makes the vector compared, GetModelInfo "
        "duplicate_distance)",
    )
    duplicates.add_argument(
        "--vector",
        help="compare by this named vector of the collection, or '' for its own (default: gem, "
        "copy detection, when the collection has it, else its own)",
    )
    duplicates.add_argument(
        "--label", action="append", default=[], help="only these labels (repeatable)"
    )
    duplicates.add_argument(
        "--limit", type=int, default=0, help="most groups, largest first; 0 for all"
    )
    duplicates.add_argument(
        "--exact", action="store_true", help="compare every pair exactly (slower)"
    )
    duplicates.add_argument("--json", action="store_true", help="print JSON for scripts")
    duplicates.add_argument(
        "--grid", metavar="DIR", help="write one picture per group into this folder"
    )


def cmd_search(args: argparse.Namespace) -> int:
    if bool(args.images) == (args.id is not None):
        raise ImageSearchError("give the query: one or more image files, or --id ID")
    if args.box and args.id is not None:
        raise ImageSearchError("--box cuts a region out of a query image; --id has none")
    box = Box.parse(args.box) if args.box else None
    options = search_options_from(args)
    with client_from(args) as client:
        if args.id is not None:
            hits = client.search_id(args.id, args.top_k, options=options)
            show_hits(hits, as_json=args.json)
            if args.grid:
                write_grid(args.grid, None, f"id {args.id}", hits, False)
            return 0
        outcomes = client.search_images(args.images, args.top_k, box=box, options=options)
        random_weights = _random_weights(client)
    if len(args.images) == 1:
        (only,) = outcomes
        if isinstance(only, ImageSearchError):
            raise only
        show_hits(only, as_json=args.json, random_weights=random_weights)
        if args.grid:
            _write_query_grid(args.grid, args.images[0], box, only, random_weights)
        return 0
    show_several(args.images, outcomes, as_json=args.json, random_weights=random_weights)
    if args.grid:
        # One sheet per query image: out-01.png, out-02.png, ... in the order given.
        out = Path(args.grid)
        for number, (image, found) in enumerate(zip(args.images, outcomes, strict=True), 1):
            if not isinstance(found, ImageSearchError):
                sheet = out.with_name(f"{out.stem}-{number:02d}{out.suffix or '.png'}")
                _write_query_grid(str(sheet), image, box, found, random_weights)
    return 1 if any(isinstance(o, ImageSearchError) for o in outcomes) else 0


def _write_query_grid(
    out: str, image: str, box: Box | None, hits: list[Hit], random_weights: bool
) -> None:
    data = Path(image).read_bytes()
    if box is not None:
        data = crop(data, box, max_pixels=1 << 62)  # already cropped once under the limit
    write_grid(out, open_picture(data), Path(image).name, hits, random_weights)


def _random_weights(client: ImageSearchClient) -> bool:
    try:
        return client.model_info().random_weights
    except ImageSearchError:
        return False


def cmd_duplicates(args: argparse.Namespace) -> int:
    """Find the collection's groups of near-duplicates, print them, optionally draw them."""
    from tqdm import tqdm

    with client_from(args) as client:
        vector = client.duplicates_vector() if args.vector is None else args.vector
        max_distance = args.max_distance
        if max_distance is None:
            max_distance = client.suggested_duplicate_distance(vector=vector)
        with tqdm(desc="comparing", unit=" items", disable=args.json, file=sys.stderr) as bar:

            def progress(scanned: int, total: int) -> None:
                bar.total = total
                bar.update(scanned - bar.n)

            groups = client.find_duplicates(
                max_distance,
                labels=args.label,
                limit=args.limit,
                exact=args.exact,
                on_progress=progress,
                vector=vector,
            )
    show_duplicates(groups, max_distance, as_json=args.json)
    if args.grid:
        write_duplicate_sheets(Path(args.grid), groups)
    return 0
