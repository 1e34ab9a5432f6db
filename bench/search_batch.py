"""Batch search benchmark: 100 queries in one SearchBatch call against 100 Search calls.

    python bench/search_batch.py [--rows 100000] [--queries 100] [--rounds 5] [--out FILE.json]

`imgsearch-searcher` as its own process on a fresh embedded PostgreSQL, with its defaults; a
collection of the default kind holding `--rows` clustered 1000-d vectors, loaded, built and
calibrated by the upkeep. Then, `--rounds` times, in turn: `--queries` held-out queries as one
Search call after another from one client, and the same queries as one SearchBatch call. QPS of
each (best and median round), and whether every query got the same hits both ways.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._loading import loaded_collection  # noqa: E402
from bench._processes import SearcherProcess, write_results  # noqa: E402
from imgsearch.v1 import searcher_pb2 as pb  # noqa: E402
from tests.searcher_helpers import searcher_stub, vector  # noqa: E402

COLLECTION = "batch"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "search_batch.json"
    )
    args = parser.parse_args()
    data, queries = datasets.clustered(args.rows, args.queries)
    searches = [
        pb.SearchRequest(collection=COLLECTION, vector=vector(q), top_k=10) for q in queries
    ]
    results: dict[str, Any] = {"rows": args.rows, "queries": args.queries, "rounds": args.rounds}
    single_qps, batch_qps, identical = [], [], True
    with tempfile.TemporaryDirectory(prefix="imgsearch-batch-") as tmp:
        server = SearcherProcess(Path(tmp) / "pg", Path(tmp) / "searcher.log")
        try:
            index = loaded_collection(server.port, COLLECTION, data).index
            channel, stub = searcher_stub(server.port)
            with channel:
                results["ef_search"] = index.ef_search
                stub.SearchBatch(pb.SearchBatchRequest(searches=searches))  # warm up
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    singles = [stub.Search(s, timeout=60) for s in searches]
                    single_qps.append(len(searches) / (time.perf_counter() - started))
                    started = time.perf_counter()
                    batch = stub.SearchBatch(pb.SearchBatchRequest(searches=searches), timeout=60)
                    batch_qps.append(len(searches) / (time.perf_counter() - started))
                    identical &= all(
                        r.WhichOneof("outcome") == "response" and r.response == s
                        for r, s in zip(batch.results, singles, strict=True)
                    )
        finally:
            server.stop()
    results["single_calls_qps"] = {"best": max(single_qps), "median": statistics.median(single_qps)}
    results["batch_qps"] = {"best": max(batch_qps), "median": statistics.median(batch_qps)}
    results["batch_over_single_median"] = (
        results["batch_qps"]["median"] / results["single_calls_qps"]["median"]
    )
    results["identical_results"] = identical
    print(
        f"single calls {results['single_calls_qps']['median']:.0f} QPS, one batch "
        f"{results['batch_qps']['median']:.0f} QPS (median of {args.rounds}): "
        f"{results['batch_over_single_median']:.2f}x; identical results: {identical}"
    )
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
