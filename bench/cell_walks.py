"""How many of a fresh query's true neighbours lie in the cells its search walks, for cells fitted
as the searcher fits them (searcher.cells.fit on a 16k-row sample) on the clustered or the
embedder data set: the most recall graphs by cell can give, whatever the graphs, for a few walk
counts and fits; and how many walks the searcher's own estimate on the sample asks for.

    python bench/cell_walks.py --rows 1000000 --fits 4 --out bench/results/cell_walks_1m.json
    python bench/cell_walks.py --dataset embedder --walks 2 4 8 12 19 --fits 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import clustered, embedder_vectors  # noqa: E402
from searcher import cells  # noqa: E402
from searcher.catalogue import Metric  # noqa: E402
from searcher.cell_graphs import graph_count  # noqa: E402

K = 10


def true_neighbours(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    squares = np.einsum("ij,ij->i", data, data)
    return np.array([np.argpartition(squares - 2 * data @ q, K)[:K] for q in queries])


def share_in_walks(fitted: cells.Cells, queries: np.ndarray, cell_of: dict, truth, walks: int):  # type: ignore[no-untyped-def]
    found = 0
    for query, neighbours in zip(queries, truth, strict=True):
        walked = set(fitted.nearest(query, walks))
        found += sum(cell_of[int(i)] in walked for i in neighbours)
    return found / truth.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--fits", type=int, default=4)
    parser.add_argument("--dataset", choices=("clustered", "embedder"), default="clustered")
    parser.add_argument("--walks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    load = clustered if args.dataset == "clustered" else embedder_vectors
    data, queries = load(args.rows, args.queries)
    truth = true_neighbours(data, queries)
    count = graph_count(args.rows)
    rng = np.random.default_rng(0)
    fits = []
    for seed in range(args.fits):
        sample = data[rng.choice(len(data), cells.SAMPLE_ROWS, replace=False)]
        fitted = cells.fit(sample, Metric.L2, count, seed=seed)
        neighbours = np.unique(truth)
        cell_of = dict(
            zip(neighbours.tolist(), fitted.assign(data[neighbours]).tolist(), strict=True)
        )
        sizes = np.bincount(fitted.assign(data), minlength=count)
        row = {
            "seed": seed,
            "share_in_walks": {
                walks: share_in_walks(fitted, queries, cell_of, truth, walks)
                for walks in args.walks
            },
            # What the searcher asks of a fit: the walks that hold NEIGHBOURS_IN_WALKS of the
            # neighbours among the sample's own rows (farther than the collection's).
            "walks_estimated_on_sample": cells.calibrated(
                fitted, sample, least=cells.MIN_WALKS, share=cells.NEIGHBOURS_IN_WALKS
            ).probes,
            "cell_rows_min_max": [int(sizes.min()), int(sizes.max())],
        }
        print(json.dumps(row), flush=True)
        fits.append(row)
    result = {"dataset": args.dataset, "rows": args.rows, "queries": args.queries}
    result |= {"cells": count, "fits": fits}
    result["seconds"] = time.perf_counter() - started
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
