"""What the upkeep's calibrations said, over every recorded run of bench/searcher.py (its
bench/results files at --rows, 100k by default): how the recall GetCollection reports compares
with the benchmark's, and where the calibrated effort landed.

    python bench/recorded_calibrations.py [--rows 100000] [--kind halfvec]

Two tables:
- reported − measured recall@10, for each number of benchmark queries and each kind of sample
  the upkeep measured on: its mean (near 0: the reported figure is not biased) and spread (the
  two samples' and the graphs' together; the benchmark's queries are the same draws in every
  run of a size, the builds and the upkeep's held-out rows differ);
- the ef_search calibrated for each kind of graph (as the upkeep's note says: one graph or
  graphs by cell, m=16 or rebuilt larger) at target 0.99 on rows held out of the build, and
  how often two of those runs land within one ladder step of each other (issue 22: "two runs
  from scratch within 1.3×")."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searcher.kinds import EFFORT_LADDER  # noqa: E402
from searcher.recall import HELD_OUT_ROWS, MOVED_VECTORS  # noqa: E402


@dataclass(frozen=True)
class Run:
    file: str
    queries: int  # the benchmark's
    sample: str  # what the upkeep measured on
    reported_minus_measured: float
    ef_search: int
    graph: str  # "one graph, m=24", "8 graphs by cell, m=16"
    target: float


def sample_source(note: str) -> str:
    """What the upkeep's recall was measured on, as its note says."""
    for source in (HELD_OUT_ROWS, MOVED_VECTORS):
        if source in note:
            return source
    return "not in the note (before stop 37: stored vectors, or moved)"


def recorded_runs(rows: int, kind: str) -> list[Run]:
    runs = []
    for path in sorted((ROOT / "bench" / "results").glob("searcher*.json")):
        result = json.loads(path.read_text())
        if result.get("rows") != rows:
            continue
        for dataset in ("clustered", "embedder"):
            row = result.get(dataset, {}).get("kinds", {}).get(kind, {})
            if "calibrated" not in row or "rpc" not in row:
                continue
            note = row["calibrated"].get("note", "")
            m = re.search(r"rebuilt with m=(\d+)", note)
            cells = re.search(r"of (\d+) graphs by cell walked", note)
            graphs = f"{cells.group(1)} graphs by cell" if cells else "one graph"
            target = re.search(r"target (0\.\d+)", note)
            runs.append(
                Run(
                    file=f"{path.name} ({dataset})",
                    queries=result["queries"],
                    sample=sample_source(note),
                    reported_minus_measured=(
                        row["calibrated"]["sample_recall"] - row["rpc"]["recall_at_10"]
                    ),
                    ef_search=row["calibrated"]["ef_search"],
                    graph=f"{graphs}, m={m.group(1) if m else 16}",
                    target=float(target.group(1)) if target else 0.0,
                )
            )
    return runs


def reported_table(runs: list[Run]) -> None:
    print("| benchmark queries | upkeep's sample | runs | mean | standard deviation | least | most "
          "| over 0.01 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[int, str], list[float]] = defaultdict(list)
    for run in runs:
        groups[run.queries, run.sample].append(run.reported_minus_measured)
    for (queries, sample), values in sorted(groups.items()):
        print(
            f"| {queries} | {sample} | {len(values)} | {statistics.mean(values):+.4f} | "
            f"{statistics.pstdev(values):.4f} | {min(values):+.4f} | {max(values):+.4f} | "
            f"{sum(abs(v) > 0.01 for v in values)} |"
        )


def effort_table(runs: list[Run]) -> None:
    print("\n| graph | runs | ef_search calibrated (runs) | pairs within one ladder step |")
    print("|---|---|---|---|")
    by_graph: dict[str, list[int]] = defaultdict(list)
    for run in runs:
        if run.sample == HELD_OUT_ROWS and run.target == 0.99 and "clustered" in run.file:
            by_graph[run.graph].append(run.ef_search)
    for graph, efforts in sorted(by_graph.items()):
        counted = ", ".join(f"{ef} ({n})" for ef, n in sorted(Counter(efforts).items()))
        pairs = list(itertools.combinations(efforts, 2))
        close = sum(abs(EFFORT_LADDER.index(a) - EFFORT_LADDER.index(b)) <= 1 for a, b in pairs)
        share = f"{close} of {len(pairs)} ({close / len(pairs):.0%})" if pairs else "-"
        print(f"| {graph} | {len(efforts)} | {counted} | {share} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kind", default="halfvec")
    args = parser.parse_args()
    runs = recorded_runs(args.rows, args.kind)
    reported_table(runs)
    effort_table(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
