"""Why stored vectors moved off their rows overstate recall: how many of such a query's true
top 10 are its own row and that row's own top 9.

    python bench/moved_queries.py [--rows 100000] [--queries 200]

The upkeep measured recall on queries made by `searcher.recall.held_out` (a stored vector moved
in a random direction by half its distance to its nearest other row) until stop 37. In 1000-d
such a move is nearly orthogonal to every difference between rows, so it adds about the same to
every squared distance and keeps the row's neighbours: a graph search reaches them through the
row's own edges, as it does for the stored vector itself. Exact numpy over the benchmarks'
clustered rows (bench/datasets.py); prints the share.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from searcher.recall import HELD_OUT_STEP  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    data, _ = datasets.clustered(args.rows, 1)
    squares = (data.astype(np.float64) ** 2).sum(axis=1)
    rng = np.random.default_rng(0)
    kept = []
    for row in rng.choice(len(data), args.queries, replace=False):
        stored = data[row].astype(np.float64)
        distances = squares - 2 * data @ stored + squares[row]
        distances[row] = np.inf
        own = np.argsort(distances)[:9]
        direction = rng.normal(size=stored.shape)
        direction /= np.linalg.norm(direction)
        query = stored + HELD_OUT_STEP * np.sqrt(max(distances[own[0]], 0.0)) * direction
        top = np.argsort(squares - 2 * data @ query)[:10]
        kept.append(len(set(top) & {row, *own}) / 10)
    print(
        f"{args.rows} clustered rows, {args.queries} moved queries: {np.mean(kept):.4f} of each "
        "one's top 10 are its own row and that row's top 9"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
