"""Getting data in and out: `imgsearch ingest` (folders of images, or CIFAR-100), and the source
tutorial's feature files (`import-features`, `export-features`)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch.cli.options import add_command, client_from
from imgsearch.client import ImageSearchClient
from imgsearch.errors import ImageSearchError
from imgsearch.records import IngestItem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
# Ids asked about per Get call when skipping what is stored (the searcher's max_ids_per_request).
IDS_PER_CHECK = 1000

Source = tuple[int, Callable[[], IngestItem | None]]  # an id, and how to load its item


def add_ingest(commands: Any) -> None:
    ingest = add_command(
        commands, "ingest", cmd_ingest, "embed and store images (folders are walked recursively)"
    )
    ingest.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    ingest.add_argument(
        "--cifar100",
        metavar="ROOT",
        help="ingest CIFAR-100 from ROOT through torchvision (downloaded when missing and "
        "online); ids = dataset indices, labels = class names",
    )
    ingest.add_argument(
        "--split", default="train", choices=["train", "test"], help="CIFAR-100 split"
    )
    ingest.add_argument(
        "--label", default="", help="label for every image (default: its folder's name)"
    )
    ingest.add_argument("--update", action="store_true", help="re-embed images already stored")


def add_feature_files(commands: Any) -> None:
    for name, run, text in (
        ("import-features", cmd_import_features, "store vectors from a id|label|{v1,...} file"),
        ("export-features", cmd_export_features, "write a collection as id|label|{v1,...} lines"),
    ):
        sub = add_command(commands, name, run, text)
        sub.add_argument("file", metavar="FILE", help="the feature file, one line per image")


def cmd_ingest(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        if args.cifar100:
            if args.paths:
                raise ImageSearchError("give either PATHs or --cifar100 ROOT, not both")
            return ingest_cifar100(client, args.cifar100, args.split, args.update)
        if not args.paths:
            raise ImageSearchError("give the image files or folders to ingest, or --cifar100 ROOT")
        return ingest_paths(client, args.paths, label=args.label, update=args.update)


def stable_id(path: Path) -> int:
    """An id from the file's absolute path: the same file gets the same id on every run."""
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def image_files(paths: Sequence[str]) -> Iterator[Path]:
    """Image files named or found (recursively, in a stable order) under the given paths."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES:
                    yield found
        elif path.is_file():
            yield path
        else:
            raise ImageSearchError(f"{name}: no such file or folder")


def ingest_paths(
    client: ImageSearchClient, paths: Sequence[str], *, label: str = "", update: bool = False
) -> int:
    """Ingest image files and folders: id from the path, label from the folder (or `label`)."""
    files = list(image_files(paths))
    unreadable: list[tuple[str, str]] = []

    def item(path: Path) -> IngestItem | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            unreadable.append((str(path), exc.strerror or str(exc)))
            return None
        return IngestItem(
            id=stable_id(path), image=data, label=label or path.parent.name, uri=str(path.resolve())
        )

    return ingest_items(
        client, [(stable_id(p), functools.partial(item, p)) for p in files], update, unreadable
    )


def ingest_cifar100(client: ImageSearchClient, root: str, split: str, update: bool) -> int:
    from imgsearch.cifar import cifar100_item, load_cifar100

    dataset = load_cifar100(Path(root), split=split)
    sources: list[Source] = [
        (index, functools.partial(cifar100_item, dataset, split, index))
        for index in range(len(dataset.data))
    ]
    return ingest_items(client, sources, update)


def ingest_items(
    client: ImageSearchClient,
    sources: Sequence[Source],
    update: bool,
    unreadable: list[tuple[str, str]] | None = None,
) -> int:
    """Ingest (id, how to load it) pairs with a progress bar and a summary. Unless `update`,
    ids already stored are skipped: re-running resumes an interrupted ingest."""
    from tqdm import tqdm

    unreadable = [] if unreadable is None else unreadable
    skipped = 0
    if not update:
        before = len(sources)
        sources = _not_stored(client, sources)
        skipped = before - len(sources)

    def items() -> Iterator[IngestItem]:
        for _, load in sources:
            item = load()
            if item is None:
                bar.update(1)
            else:
                yield item

    started = time.monotonic()
    with tqdm(total=len(sources), unit="img", desc="ingest", file=sys.stderr) as bar:
        report = client.ingest(items(), on_progress=bar.update, expected_items=len(sources))
    elapsed = time.monotonic() - started
    failed = [(item.uri, reason) for item, reason in report.failed] + unreadable
    rate = report.stored / elapsed if elapsed > 0 else 0.0
    print(
        f"ingested {report.stored} ({report.inserted} new, {report.updated} updated), "
        f"skipped {skipped} already stored, failed {len(failed)} — {rate:.1f} images/s"
    )
    for uri, reason in failed:
        print(f"  failed: {uri}: {reason}")
    return 1 if failed else 0


def _not_stored(client: ImageSearchClient, sources: Sequence[Source]) -> list[Source]:
    client.ensure_collection()
    present: set[int] = set()
    ids = [item_id for item_id, _ in sources]
    for start in range(0, len(ids), IDS_PER_CHECK):
        present |= client.existing_ids(ids[start : start + IDS_PER_CHECK])
    return [(item_id, load) for item_id, load in sources if item_id not in present]


def cmd_import_features(args: argparse.Namespace) -> int:
    from imgsearch.features import read_features

    with client_from(args) as client, open(args.file, encoding="utf-8") as lines:
        stored = client.import_features(read_features(lines))
    print(f"imported {stored} rows from {args.file} into {args.collection}")
    return 0


def cmd_export_features(args: argparse.Namespace) -> int:
    from imgsearch.features import write_features

    def rows(client: ImageSearchClient) -> Iterator[tuple[int, str, np.ndarray]]:
        for item in client.list_items(include_vectors=True):
            if item.vector is not None:  # always, as they were asked for
                yield item.id, item.label, item.vector

    with client_from(args) as client, open(args.file, "w", encoding="utf-8") as out:
        count = write_features(out, rows(client))
    print(f"exported {count} rows of {args.collection} to {args.file}")
    return 0
