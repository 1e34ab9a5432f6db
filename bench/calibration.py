"""Calibration benchmark: how much of the calibrated search effort is the build, and how much
the recall sample.

    python bench/calibration.py [--rows 100000] [--queries 1500] [--seed 1]
                                [--out bench/results/calibration.json]

`imgsearch-searcher` runs as its own process on a fresh embedded PostgreSQL, with its defaults;
a collection of the default kind is loaded with `--rows` clustered vectors (bench/datasets.py)
and its upkeep waited for: what it calibrated is recorded, with the upkeep's log lines. Then
`--queries` held-out queries are made by the upkeep's own code (searcher.recall.held_out:
stored vectors moved by half their distance to their nearest other row, found by the live
search, in a random direction) and searched at every
ef_search of the ladder (and of the ladder before stop 30): recall@10 and lost queries (under
half of their neighbours found) per ef_search, for this build. Last, the calibration's rule
(the cheapest ef_search with mean recall ≥ 0.99 and at most 1% lost) is applied to 300 random
samples of 200, 500 and 1,000 of those queries, on both ladders: how far the sample alone
moves the choice.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._loading import loaded_collection  # noqa: E402
from bench._processes import SearcherProcess, write_results  # noqa: E402
from bench.additions import Truth  # noqa: E402
from imgsearch.v1 import searcher_pb2 as pb  # noqa: E402
from searcher.catalogue import Metric  # noqa: E402
from searcher.effort import LOST_QUERIES_ALLOWED, LOST_QUERY_RECALL  # noqa: E402
from searcher.kinds import EFFORT_LADDER  # noqa: E402
from searcher.recall import RECALL_AT, held_out, recall_by_distance  # noqa: E402
from tests.searcher_helpers import searcher_stub, vector  # noqa: E402

OLD_LADDER = (40, 100, 200, 400, 700, 1000)
TARGET = 0.99
SAMPLE_SIZES = (200, 500, 1000)
DRAWS = 300


def held_out_queries(
    port: int, collection: str, data: np.ndarray, count: int, seed: int
) -> np.ndarray:
    """`count` held-out queries made by the upkeep's own construction (searcher.recall.held_out),
    its nearest-neighbour distances found, as the upkeep finds them, by the live search."""
    channel, stub = searcher_stub(port)

    def search(query: np.ndarray, top_k: int) -> Any:
        request = pb.SearchRequest(collection=collection, vector=vector(query), top_k=top_k)
        return stub.Search(request, timeout=30).hits

    picked = np.random.default_rng(seed).choice(len(data), count, replace=False)
    with channel:
        return held_out(data[picked], picked, Metric.L2, search, seed)


def recalls_by_effort(
    port: int, collection: str, queries: np.ndarray, truth: np.ndarray
) -> dict[int, np.ndarray]:
    channel, stub = searcher_stub(port)
    by_effort = {}
    with channel:
        for ef_search in sorted(set(EFFORT_LADDER) | set(OLD_LADDER)):
            params = pb.SearchParams(ef_search=ef_search)
            recalls = []
            for query, true in zip(queries, truth, strict=True):
                request = pb.SearchRequest(
                    collection=collection, vector=vector(query), top_k=RECALL_AT, params=params
                )
                hits = stub.Search(request, timeout=30).hits
                recalls.append(recall_by_distance([h.distance for h in hits], true))
            by_effort[ef_search] = np.asarray(recalls)
            print(
                f"ef_search {ef_search}: recall@10 {by_effort[ef_search].mean():.4f}, "
                f"{int((by_effort[ef_search] < LOST_QUERY_RECALL).sum())} lost",
                flush=True,
            )
    return by_effort


def chosen(by_effort: dict[int, np.ndarray], ladder: tuple[int, ...], sample: np.ndarray) -> int:
    """The calibration's rule on one sample of the queries."""
    for ef_search in ladder:
        recalls = by_effort[ef_search][sample]
        lost = float(np.mean(recalls < LOST_QUERY_RECALL))
        if round(float(recalls.mean()), 4) >= TARGET and lost <= LOST_QUERIES_ALLOWED:
            return ef_search
    return ladder[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/calibration.json")
    args = parser.parse_args()
    data, _ = datasets.clustered(args.rows, 10)
    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {"rows": args.rows, "queries": args.queries, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="imgsearch-calibration-") as tmp:
        server = SearcherProcess(Path(tmp) / "pg", Path(tmp) / "searcher.log")
        try:
            started = time.perf_counter()
            index = loaded_collection(server.port, "calibration", data).index
            results["load_and_upkeep_s"] = time.perf_counter() - started
            results["upkeep"] = {
                "ef_search": index.ef_search,
                "recall": index.recall,
                "recall_sample": index.recall_sample,
                "note": index.note,
            }
            print(f"upkeep: {results['upkeep']}", flush=True)
            queries = held_out_queries(server.port, "calibration", data, args.queries, args.seed)
            truth = Truth(queries, data).best
            by_effort = recalls_by_effort(server.port, "calibration", queries, truth)
        finally:
            server.stop()
        log = (Path(tmp) / "searcher.log").read_text(errors="replace").splitlines()
        results["upkeep_log"] = [line for line in log if "searcher.maintenance" in line]
    results["by_ef_search"] = {
        str(ef): {"recall_at_10": float(r.mean()), "lost": int((r < LOST_QUERY_RECALL).sum())}
        for ef, r in by_effort.items()
    }
    results["all_queries_choose"] = {
        "ladder": chosen(by_effort, EFFORT_LADDER, np.arange(args.queries)),
        "old_ladder": chosen(by_effort, OLD_LADDER, np.arange(args.queries)),
    }
    results["samples_choose"] = {}
    for size in (s for s in SAMPLE_SIZES if s < args.queries):
        for name, ladder in (("ladder", EFFORT_LADDER), ("old_ladder", OLD_LADDER)):
            choices = [
                chosen(by_effort, ladder, rng.choice(args.queries, size, replace=False))
                for _ in range(DRAWS)
            ]
            values, counts = np.unique(choices, return_counts=True)
            spread = dict(zip(values.tolist(), counts.tolist(), strict=True))
            results["samples_choose"][f"{size} queries, {name}"] = spread
            print(f"{size} queries, {name}: ef_search chosen {spread} of {DRAWS}", flush=True)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
