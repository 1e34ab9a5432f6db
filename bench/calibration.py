"""Calibration benchmark: how far the recall sample alone moves the calibrated search effort,
and the recall reported with it, on one build.

    python bench/calibration.py [--rows 100000] [--queries 6000] [--seed 1]
                                [--out bench/results/calibration.json]

`imgsearch-searcher` runs as its own process on a fresh embedded PostgreSQL, with its defaults;
a collection of the default kind is loaded with `--rows` clustered vectors (bench/datasets.py)
and its upkeep waited for (build, check, repair if it rebuilds): what it calibrated is recorded,
with the upkeep's log lines. Then `--queries` new draws of the same data set (held out, as the
benchmark's queries and the upkeep's held-out rows are: no graph holds them) are searched at
every ef_search of the ladder: recall@10 and lost queries (under half of their neighbours found)
per step, for this build: the pool.

Last, the calibration's own rule (searcher.effort: the cheapest ef_search whose mean recall
meets the target with at most 1% of queries lost, found by the same search of the ladder) is
applied to DRAWS random samples of each size in SAMPLE_SIZES (2,000: the upkeep's at 100k
rows). For each size: which ef_search the samples choose, and how far the recall a sample
reports at its choice lies from the pool's recall there: what the sample adds to the figure
GetCollection shows. The same for samples that choose on one half and report on the other.
And the spread of a benchmark's mean over 200 and 1,000 queries at one fixed ef_search.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
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
from searcher.effort import (  # noqa: E402
    LOST_QUERY_RECALL,
    cheapest_meeting,
    ladder_step,
    meets_target,
)
from searcher.kinds import EFFORT_LADDER, spec  # noqa: E402
from searcher.recall import RECALL_AT, recall_by_distance  # noqa: E402
from searcher.settings import StoreSettings  # noqa: E402
from tests.searcher_helpers import searcher_stub, vector  # noqa: E402

SETTINGS = StoreSettings()
KIND = spec(SETTINGS.default_kind)
# The ladder as the calibration walks it: (ef_search, candidates), step by step.
LADDER = KIND.effort_ladder(0)
SAMPLE_SIZES = (200, 1000, 2000, 4000)
BENCHMARK_SIZES = (200, 1000)
DRAWS = 300


def recalls_by_effort(
    port: int, collection: str, queries: np.ndarray, truth: np.ndarray
) -> np.ndarray:
    """(ladder steps, queries): recall@10 of each query at each ef_search of the ladder."""
    channel, stub = searcher_stub(port)
    recalls = np.empty((len(EFFORT_LADDER), len(queries)))
    with channel:
        for step, ef_search in enumerate(EFFORT_LADDER):
            params = pb.SearchParams(ef_search=ef_search)
            for i, (query, true) in enumerate(zip(queries, truth, strict=True)):
                request = pb.SearchRequest(
                    collection=collection, vector=vector(query), top_k=RECALL_AT, params=params
                )
                hits = stub.Search(request, timeout=30).hits
                recalls[step, i] = recall_by_distance([h.distance for h in hits], true)
            print(
                f"ef_search {ef_search}: recall@10 {recalls[step].mean():.4f}, "
                f"{int((recalls[step] < LOST_QUERY_RECALL).sum())} lost",
                flush=True,
            )
    return recalls


def chosen_step(recalls: np.ndarray, sample: np.ndarray) -> int:
    """The ladder step the calibration chooses on `sample` (indices of the pool)."""
    return cheapest_meeting(
        lambda step: meets_target(recalls[step, sample], SETTINGS.recall_target),
        ladder_step(LADDER, KIND.default_effort(SETTINGS.default_ef_search)),
        len(LADDER) - 1,
    )


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "p5": float(np.percentile(values, 5)),
        "p95": float(np.percentile(values, 95)),
    }


def samples_choose(recalls: np.ndarray, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """DRAWS samples of `size` queries: the ef_search each chooses, and its reported recall
    (at the choice) minus the pool's there; also choosing on one half, reporting the other."""
    pool_recall = recalls.mean(axis=1)
    choices, reported_over, split_choices, split_over = [], [], [], []
    for _ in range(DRAWS):
        sample = rng.choice(recalls.shape[1], size, replace=False)
        step = chosen_step(recalls, sample)
        choices.append(EFFORT_LADDER[step])
        reported_over.append(float(recalls[step, sample].mean() - pool_recall[step]))
        choose_on, report_on = sample[: size // 2], sample[size // 2 :]
        step = chosen_step(recalls, choose_on)
        split_choices.append(EFFORT_LADDER[step])
        split_over.append(float(recalls[step, report_on].mean() - pool_recall[step]))

    def counted(efforts: list[int]) -> dict[str, int]:
        values, counts = np.unique(efforts, return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts, strict=True)}

    return {
        "chosen_ef_search": counted(choices),
        "reported_minus_pool": spread(reported_over),
        "split_chosen_ef_search": counted(split_choices),
        "split_reported_minus_pool": spread(split_over),
    }


def benchmark_spread(
    recall_at: Callable[[np.ndarray], float], queries: int, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """How far a benchmark's mean over BENCHMARK_SIZES queries lies from the pool's."""
    everyone = recall_at(np.arange(queries))
    return {
        str(size): spread(
            [recall_at(rng.choice(queries, size, replace=False)) - everyone for _ in range(DRAWS)]
        )
        for size in BENCHMARK_SIZES
        if size < queries
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/calibration.json")
    args = parser.parse_args()
    data, queries = datasets.clustered(args.rows, args.queries)
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
            truth = Truth(queries, data).best
            recalls = recalls_by_effort(server.port, "calibration", queries, truth)
        finally:
            server.stop()
        log = (Path(tmp) / "searcher.log").read_text(errors="replace").splitlines()
        results["upkeep_log"] = [
            line for line in log if "searcher.maintenance" in line or "searcher.effort" in line
        ]
    results["by_ef_search"] = {
        str(ef): {
            "recall_at_10": float(recalls[step].mean()),
            "lost": int((recalls[step] < LOST_QUERY_RECALL).sum()),
        }
        for step, ef in enumerate(EFFORT_LADDER)
    }
    pool_step = chosen_step(recalls, np.arange(args.queries))
    results["all_queries_choose"] = EFFORT_LADDER[pool_step]
    upkeep_step = EFFORT_LADDER.index(index.ef_search)
    results["pool_recall_at_upkeeps_ef_search"] = float(recalls[upkeep_step].mean())
    results["samples_choose"] = {}
    for size in (s for s in SAMPLE_SIZES if s < args.queries):
        results["samples_choose"][str(size)] = samples_choose(recalls, size, rng)
        print(f"{size} queries: {results['samples_choose'][str(size)]}", flush=True)
    results["benchmark_minus_pool_at_upkeeps_ef_search"] = benchmark_spread(
        lambda sample: float(recalls[upkeep_step, sample].mean()), args.queries, rng
    )
    print(f"benchmark's spread: {results['benchmark_minus_pool_at_upkeeps_ef_search']}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
