"""Duplicates as a newcomer meets them, for bench/quality.py --stack: the local stack as
`imgsearch up` starts it (its default heads, or those given; random weights, seed 0), the
corpus and planted edited copies ingested through the client, and `imgsearch duplicates` with
its defaults (the vector and distance it picks itself). Scored: how many groups are one true
group (group precision), how many planted copies share a group with their original (planted-pair
recall, also per edit kind), whether any member lies farther from its group's first than the
distance, the ingest rate, and each vector's table and index sizes.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from embedder.probes import EDITS
from imgsearch import defaults
from imgsearch.client import ImageSearchClient
from imgsearch.records import IngestItem
from imgsearch.v1 import searcher_pb2
from stack.local import LocalStack, StackConfig

COLLECTION = "quality"
# Duplicates are also scored at these multiples of the suggested distance: is recall limited by
# the distance, or by copies that lie among distinct pictures?
DISTANCE_SWEEP = (0.5, 1.5, 2.0, 3.0)
UPKEEP_S = 1800  # a deadline for the index upkeep after the ingest, not an expected duration


def planted_copies(stored: list[bytes], count: int) -> list[tuple[int, str, bytes]]:
    """(original's id, edit, copy as JPEG) for the first `count` stored pictures, each edited
    one way, going round every edit of embedder.probes.EDITS in turn."""
    edits = [
        (f"{kind} {name}", edit) for kind, named in EDITS.items() for name, edit in named.items()
    ]
    copies = []
    for original in range(count):
        label, edit = edits[original % len(edits)]
        with Image.open(io.BytesIO(stored[original])) as picture:
            edited = edit(picture.convert("RGB"))
        out = io.BytesIO()
        edited.convert("RGB").save(out, "JPEG", quality=90)
        copies.append((original, label, out.getvalue()))
    return copies


def measure_stack(
    head: str, stored: list[bytes], planted: list[tuple[int, str, bytes]]
) -> dict[str, Any]:
    """Ingest `stored` and `planted` into a fresh stack serving `head`, then find duplicates as
    `imgsearch duplicates` does without flags."""
    truth = list(range(len(stored))) + [original for original, _, _ in planted]
    items = [IngestItem(id=i, image=data, uri=f"corpus-{i}.jpg") for i, data in enumerate(stored)]
    items += [
        IngestItem(id=len(stored) + k, image=data, uri=f"copy-{k}-of-{original}.jpg")
        for k, (original, _, data) in enumerate(planted)
    ]
    with tempfile.TemporaryDirectory(prefix="quality-stack-") as data_dir:
        config = StackConfig(
            data_dir=Path(data_dir), embedder_port=0, searcher_port=0, weights="random", head=head
        )
        with (
            LocalStack(config) as stack,
            ImageSearchClient(
                stack.embedder_address, stack.searcher_address, collection=COLLECTION
            ) as client,
        ):
            started = time.monotonic()
            report = client.ingest(items)
            ingest_s = time.monotonic() - started
            assert not report.failed, report.failed[:3]
            assert stack.searcher.store is not None
            stack.searcher.store.maintenance.wait_idle(UPKEEP_S)
            vector = client.duplicates_vector()
            distance = client.suggested_duplicate_distance()
            started = time.monotonic()
            groups = client.find_duplicates(distance)
            duplicates_s = time.monotonic() - started
            sweep = {
                str(factor): score(
                    client.find_duplicates(factor * distance),
                    truth,
                    planted,
                    len(stored),
                    factor * distance,
                )
                for factor in DISTANCE_SWEEP
            }
            sizes = _sizes(client)
    return {
        "head": head,
        "vector": vector or "own",
        "items": len(items),
        "ingest_seconds": ingest_s,
        "ingest_images_per_s": len(items) / ingest_s,
        "duplicate_distance": distance,
        "find_duplicates_seconds": duplicates_s,
        **score(groups, truth, planted, len(stored), distance),
        "at_multiples_of_the_distance": {
            factor: {k: v for k, v in figures.items() if k != "planted_pair_recall_by_edit"}
            for factor, figures in sweep.items()
        },
        "sizes": sizes,
    }


def score(
    groups: list[Any],
    truth: list[int],
    planted: list[tuple[int, str, bytes]],
    stored: int,
    distance: float,
) -> dict[str, Any]:
    """Group precision, planted-pair recall (all and per edit kind), members beyond the distance."""
    pure = [g for g in groups if len({truth[m.id] for m in g.members}) == 1]
    together = {frozenset(m.id for m in g.members) for g in groups}
    found_by_kind: dict[str, list[bool]] = {}
    for k, (original, edit, _) in enumerate(planted):
        copy = stored + k
        found = any(original in members and copy in members for members in together)
        found_by_kind.setdefault(edit.split()[0], []).append(found)
    found_all = [f for kind in found_by_kind.values() for f in kind]
    beyond = [m for g in groups for m in g.members if m.distance > distance * (1 + 1e-6)]
    return {
        "groups": len(groups),
        "grouped_items": sum(len(g.members) for g in groups),
        "group_precision": len(pure) / len(groups) if groups else 1.0,
        "planted_pair_recall": sum(found_all) / len(found_all) if found_all else 1.0,
        "planted_pair_recall_by_edit": {k: sum(v) / len(v) for k, v in found_by_kind.items()},
        "members_beyond_the_distance": len(beyond),
        "largest_group": max((len(g.members) for g in groups), default=0),
    }


def _sizes(client: ImageSearchClient) -> dict[str, Any]:
    """Bytes per item of each vector's table and indexes."""
    sizes = {}
    names = [""] + [v.name for v in client.describe_collection().vectors]
    for name in names:
        request = searcher_pb2.GetStatsRequest(collection=COLLECTION, vector_name=name)
        stats = client.searcher.GetStats(request, timeout=defaults.CALL_TIMEOUT_S)
        rows = max(1, stats.row_count)
        sizes[name or "own"] = {
            "rows": stats.row_count,
            "table_bytes_per_item": stats.table_bytes / rows,
            "index_bytes_per_item": stats.index_bytes / rows,
        }
    return sizes
