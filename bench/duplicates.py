"""FindDuplicates at scale: how long the searcher takes to group a collection's near-duplicates,
and whether the groups are the true ones.

    python bench/duplicates.py                   # 100k rows, ~10 minutes on 2 cores
    python bench/duplicates.py --rows 20000

Stores `rows` clustered 1000-d vectors (bench.datasets, as bench/searcher.py) plus planted
near-copies of some of them (pairs and triples, at a tenth of the distance between distinct
neighbours), through the Upsert RPC into the default index kind; waits for the index and its
recall check; then runs FindDuplicates through the RPC, timing its progress events, and compares
the groups with the exact ones (every pair within max_distance, found by numpy over all pairs and
grouped the same way). Results: bench/results/duplicates.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._loading import upsert_all, wait_for_upkeep  # noqa: E402
from bench._processes import SearcherProcess  # noqa: E402
from imgsearch.v1 import searcher_pb2 as pb  # noqa: E402
from searcher.grouping import Neighbours  # noqa: E402
from tests.searcher_helpers import searcher_stub  # noqa: E402

COPY_NOISE = 0.5  # norm of the difference between a planted copy and its original
MAX_DISTANCE = 1.0


def planted(rows: int, groups: int, seed: int = 7) -> tuple[np.ndarray, list[set[int]]]:
    """`rows` vectors followed by near-copies of `groups` of them (every third group gets two
    copies), and the planted groups as sets of row ids."""
    data, _ = datasets.clustered(rows, 1)
    rng = np.random.default_rng(seed)
    originals = rng.choice(rows, size=groups, replace=False)
    copies, truth = [], []
    next_id = rows
    for n, original in enumerate(originals):
        group = {int(original)}
        for _ in range(2 if n % 3 == 0 else 1):
            noise = rng.normal(size=data.shape[1])
            copies.append(data[original] + COPY_NOISE * noise / np.linalg.norm(noise))
            group.add(next_id)
            next_id += 1
        truth.append(group)
    return np.vstack([data, np.asarray(copies, dtype=np.float32)]), truth


def exact_groups(data: np.ndarray, max_distance: float, block: int = 2000) -> list[set[int]]:
    """The groups (as searcher.grouping forms them) of every pair within max_distance, by numpy:
    all pairs in single precision with a margin wider than its rounding, then each pair inside
    the margin decided in double precision."""
    neighbours = Neighbours()
    x = data.astype(np.float32)
    squares = np.einsum("ij,ij->i", x, x)
    # |a|² - 2a·b + |b|² in float32 is off by at most a few ulps of |a|² + |b|².
    margin = 1e-4 * 2 * float(squares.max())
    exact = data.astype(np.float64)
    for start in range(0, len(x), block):
        part = x[start : start + block]
        d = squares[start : start + block, None] - 2 * part @ x.T + squares[None, :]
        for i, j in zip(*np.nonzero(d <= max_distance**2 + margin), strict=True):
            a, b = start + int(i), int(j)
            squared = float(np.sum((exact[a] - exact[b]) ** 2))
            if a != b and squared <= max_distance**2:
                neighbours.add(a, b, squared**0.5)
    return [set(ids) for ids in neighbours.groups()]


def find_duplicates(port: int, name: str, max_distance: float) -> dict[str, Any]:
    channel, stub = searcher_stub(port)
    started = time.monotonic()
    progress: list[tuple[float, int, int]] = []
    groups: list[set[int]] = []
    with channel:
        request = pb.FindDuplicatesRequest(collection=name, max_distance=max_distance)
        for event in stub.FindDuplicates(request, timeout=7200):
            if event.WhichOneof("event") == "progress":
                p = event.progress
                progress.append((time.monotonic() - started, p.scanned_items, p.total_items))
            else:
                groups.append({m.id for m in event.group.members})
    took = time.monotonic() - started
    return {
        "seconds": took,
        "items_per_s": progress[-1][2] / took if progress else 0.0,
        "first_progress_s": progress[0][0] if progress else None,
        "progress_events": len(progress),
        "groups": groups,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=1000, help="planted groups")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "duplicates.json"))
    args = parser.parse_args()
    data, planted_groups = planted(args.rows, args.groups)
    started = time.monotonic()
    truth = exact_groups(data, MAX_DISTANCE)
    numpy_s = time.monotonic() - started
    print(f"{len(data)} rows, {len(truth)} exact groups (numpy, {numpy_s:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp:
        searcher = SearcherProcess(Path(tmp) / "pgdata", Path(tmp) / "searcher.log")
        try:
            channel, stub = searcher_stub(searcher.port)
            with channel:
                stub.CreateCollection(pb.CreateCollectionRequest(name="dups", dim=data.shape[1]))
            started = time.monotonic()
            upsert_all(searcher.port, "dups", data)
            collection = wait_for_upkeep(searcher.port, "dups")
            loaded_s = time.monotonic() - started
            print(f"loaded and indexed in {loaded_s:.0f} s", flush=True)
            run = find_duplicates(searcher.port, "dups", MAX_DISTANCE)
        finally:
            searcher.stop()
            log = searcher.log_path.read_text()
    run["searcher_log"] = re.findall(r".*duplicate search.*", log)
    found = sorted(map(sorted, run.pop("groups")))
    expected = sorted(map(sorted, truth))
    exact_matches = len({tuple(g) for g in found} & {tuple(g) for g in expected})
    result = {
        "rows": len(data),
        "planted_groups": len(planted_groups),
        "exact_groups": len(expected),
        "found_groups": len(found),
        "groups_equal_to_exact": exact_matches,
        "max_distance": MAX_DISTANCE,
        "index": pb.IndexKind.Name(collection.index_params.kind),
        "ef_search": collection.index.ef_search,
        "m": collection.index_params.m,
        "index_note": collection.index.note,
        "load_and_index_s": loaded_s,
        "numpy_all_pairs_s": numpy_s,
        **run,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
