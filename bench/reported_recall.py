"""How the recall GetCollection reports compares with the benchmark's, over every recorded run:
reads the bench/results files of bench/searcher.py (at --rows, 100k by default) and gives, for
each number of benchmark queries and each kind of sample the upkeep measured on, the mean and
spread of reported − measured recall@10.

    python bench/reported_recall.py [--rows 100000] [--kind halfvec]

The benchmark's queries are the same draws in every run of a size; the builds and the upkeep's
held-out rows differ. A mean near 0 says the reported figure is not biased; the spread is the
two samples' (and the graphs') together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sample_source(note: str) -> str:
    """What the upkeep's recall was measured on, as its note says."""
    if "held out of the build" in note:
        return "rows held out of the build"
    if "moved" in note:
        return "stored vectors moved"
    return "not in the note (before stop 37: stored vectors, or moved)"


def differences(rows: int, kind: str) -> dict[tuple[int, str], list[tuple[str, float]]]:
    """{(benchmark queries, upkeep's sample): [(results file, reported − measured)]} over the
    recorded runs."""
    by_queries: dict[tuple[int, str], list[tuple[str, float]]] = defaultdict(list)
    for path in sorted((ROOT / "bench" / "results").glob("searcher*.json")):
        result = json.loads(path.read_text())
        if result.get("rows") != rows:
            continue
        for dataset in ("clustered", "embedder"):
            row = result.get(dataset, {}).get("kinds", {}).get(kind, {})
            if "calibrated" in row and "rpc" in row:
                difference = row["calibrated"]["sample_recall"] - row["rpc"]["recall_at_10"]
                sample = sample_source(row["calibrated"].get("note", ""))
                by_queries[result["queries"], sample].append(
                    (f"{path.name} ({dataset})", difference)
                )
    return by_queries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kind", default="halfvec")
    args = parser.parse_args()
    print("| benchmark queries | upkeep's sample | runs | mean | standard deviation | least | most "
          "| over 0.01 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for (queries, sample), runs in sorted(differences(args.rows, args.kind).items()):
        values = [difference for _, difference in runs]
        print(
            f"| {queries} | {sample} | {len(values)} | {statistics.mean(values):+.4f} | "
            f"{statistics.pstdev(values):.4f} | {min(values):+.4f} | {max(values):+.4f} | "
            f"{sum(abs(v) > 0.01 for v in values)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
