"""Additions benchmark: searching an indexed collection while items are added to it.

    python bench/additions.py [--rows 100000] [--add 10000] [--rate ROWS_PER_S]
                              [--out bench/results/additions.json]

`imgsearch-searcher` runs as its own process on a fresh embedded PostgreSQL, with its defaults.
A collection of the default kind is loaded with `--rows` clustered vectors (bench/datasets.py)
and its upkeep waited for. Then, in one run, each phase searching with held-out queries (never
stored vectors), one at a time, as a client does:

- before: Search p50 / p95 and recall@10 (numpy's exact answer over the stored rows);
- during: `--add` more vectors of the same mixture are upserted, 16 items a message, one
  Upsert call after another (as `imgsearch ingest` sends them), by a writer in its own process
  (as an ingest job is), while this process searches; after each Upsert returns, the writer
  searches the first of its items by its own vector (it must be its own first hit); recall is
  judged against every row stored before the search began;
- right after the last Upsert: the same, the added rows not yet folded into the index;
- folded: once the upkeep has folded them in (or built them in) and measured the index again
  (its recheck after RECHECK_SHARE of the rows were added), how long that took, and the recall
  GetCollection then reports against the recall measured here.

The searcher's log lines on the fresh rows' cells (how many, how many a search scans) are kept
in the results.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._loading import loaded_collection  # noqa: E402
from bench._processes import SearcherProcess, write_results  # noqa: E402
from bench.searcher import percentile_ms  # noqa: E402
from imgsearch.v1 import searcher_pb2 as pb  # noqa: E402
from searcher.recall import recall_by_distance  # noqa: E402
from tests.searcher_helpers import clustered_vectors, searcher_stub, vector  # noqa: E402

TOP_K = 10
PER_MESSAGE = 16
COLLECTION = "additions"


class Truth:
    """Exact top-k distances for the held-out queries over the rows stored so far."""

    def __init__(self, queries: np.ndarray, stored: np.ndarray) -> None:
        self.queries = queries.astype(np.float64)
        self.best = self._nearest(stored)

    def _nearest(self, rows: np.ndarray, chunk: int = 20_000) -> np.ndarray:
        own = np.einsum("ij,ij->i", self.queries, self.queries)[:, None]
        best = np.full((len(self.queries), 0), np.inf)
        for start in range(0, len(rows), chunk):
            x = rows[start : start + chunk].astype(np.float64)
            squares = own + np.einsum("ij,ij->i", x, x)[None, :] - 2 * self.queries @ x.T
            merged = np.concatenate([best, np.sqrt(np.maximum(squares, 0))], axis=1)
            keep = min(TOP_K, merged.shape[1])
            best = np.sort(np.partition(merged, keep - 1, axis=1)[:, :keep], axis=1)
        return best

    def add(self, rows: np.ndarray) -> None:
        """Take `rows` in: the truth for searches that begin from now on."""
        merged = np.concatenate([self.best, self._nearest(rows)], axis=1)
        self.best = np.sort(merged, axis=1)[:, :TOP_K]


def search_loop(
    stub: Any, queries: np.ndarray, truth: Any, stop: threading.Event, limit: int = 0
) -> dict[str, float]:
    """Search the held-out queries round and round until `stop` (or `limit` searches): p50,
    p95 and mean recall@10, each search judged by the truth as it stood when it began."""
    seconds, recalls, i = [], [], 0
    while not stop.is_set() and (not limit or i < limit):
        q = i % len(queries)
        expected = truth()[q]
        request = pb.SearchRequest(collection=COLLECTION, vector=vector(queries[q]), top_k=TOP_K)
        started = time.perf_counter()
        hits = stub.Search(request, timeout=60).hits
        seconds.append(time.perf_counter() - started)
        recalls.append(recall_by_distance([h.distance for h in hits], expected))
        i += 1
    return {
        "searches": len(seconds),
        "p50_ms": percentile_ms(seconds, 50),
        "p95_ms": percentile_ms(seconds, 95),
        "recall_at_10": float(np.mean(recalls)),
    }


def write_additions(
    port: int,
    added: np.ndarray,
    first_id: int,
    rate: float,
    done: Any,
    own_first: Any,
    seconds: Any,
) -> None:
    """The writer, in a process of its own as an ingest job is: upsert `added` 16 a message,
    one Upsert after another (at most `rate` rows a second, if given), and search each
    message's first item by its own vector once the Upsert returns. `done` counts the messages
    whose Upsert has returned."""
    channel, writer = searcher_stub(port)
    started = time.perf_counter()
    with channel:
        for n, start in enumerate(range(0, len(added), PER_MESSAGE), start=1):
            if rate:  # an ingest sends what its embedder makes, no faster
                time.sleep(max(0.0, started + start / rate - time.perf_counter()))
            rows = added[start : start + PER_MESSAGE]
            items = [pb.Item(id=first_id + start + j, vector=vector(v)) for j, v in enumerate(rows)]
            writer.Upsert(iter([pb.UpsertRequest(collection=COLLECTION, items=items)]), timeout=60)
            done.value = n
            hit = writer.Search(
                pb.SearchRequest(collection=COLLECTION, vector=vector(rows[0]), top_k=1),
                timeout=60,
            ).hits[0]
            own_first.value += hit.id == first_id + start
    seconds.value = time.perf_counter() - started


def truth_after_each_message(truth: Truth, added: np.ndarray) -> list[np.ndarray]:
    """The exact answer as it stands after 0, 1, 2 … messages: computed before the writes
    start, so that judging a search costs the searching process nothing while they run."""
    snapshots = [truth.best]
    for start in range(0, len(added), PER_MESSAGE):
        truth.add(added[start : start + PER_MESSAGE])
        snapshots.append(truth.best)
    return snapshots


def add_while_searching(
    port: int, queries: np.ndarray, truth: Truth, added: np.ndarray, first_id: int, rate: float
) -> dict[str, Any]:
    """The phases from `during` on (see the module's docstring)."""
    snapshots = truth_after_each_message(truth, added)
    spawn = multiprocessing.get_context("spawn")
    done, own_first = spawn.Value("i", 0), spawn.Value("i", 0)
    seconds = spawn.Value("d", 0.0)
    writer = spawn.Process(
        target=write_additions, args=(port, added, first_id, rate, done, own_first, seconds)
    )
    channel, stub = searcher_stub(port)
    result: dict[str, Any] = {}
    stop = threading.Event()
    with channel:
        measured_at = index_of(stub).recall_time  # the load's check
        writer.start()
        while not done.value and writer.is_alive():  # searches start with the first write
            time.sleep(0.01)
        watcher = threading.Thread(target=lambda: (writer.join(), stop.set()))
        watcher.start()
        result["during"] = search_loop(stub, queries, lambda: snapshots[done.value], stop)
        watcher.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"the writer process failed (exit code {writer.exitcode})")
        messages = len(snapshots) - 1
        result["added_per_s"] = len(added) / seconds.value
        result["own_first_hit"] = own_first.value / messages
        never = threading.Event()
        result["right_after"] = search_loop(stub, queries, lambda: truth.best, never, limit=400)
        result["fresh_rows_right_after"] = stub.GetStats(
            pb.GetStatsRequest(collection=COLLECTION)
        ).fresh_rows
        folding = time.perf_counter()
        while stub.GetStats(pb.GetStatsRequest(collection=COLLECTION)).fresh_rows or (
            index_of(stub).recall_time == measured_at
        ):
            time.sleep(0.5)
        result["folded_after_s"] = time.perf_counter() - folding
        result["folded"] = search_loop(stub, queries, lambda: truth.best, never, limit=400)
        index = index_of(stub)
        result["index_note"] = index.note
        result["reported_recall"] = index.recall
        result["reported_minus_measured"] = index.recall - result["folded"]["recall_at_10"]
    return result


def index_of(stub: Any) -> Any:
    return stub.GetCollection(pb.GetCollectionRequest(name=COLLECTION)).collection.index


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--add", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="rows a second the writer adds at most (0: as fast as the searcher takes them; "
        "an ingest adds at its embedder's rate, ~200 pictures/s on this machine)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "additions.json")
    args = parser.parse_args()
    data, queries = datasets.clustered(args.rows, args.queries)
    added = clustered_vectors(args.add, seed=77)
    results: dict[str, Any] = {"rows": args.rows, "added": args.add, "rate_limit": args.rate}
    with tempfile.TemporaryDirectory(prefix="imgsearch-additions-") as tmp:
        server = SearcherProcess(Path(tmp) / "pg", Path(tmp) / "searcher.log")
        try:
            started = time.perf_counter()
            index = loaded_collection(server.port, COLLECTION, data).index
            results["load_and_upkeep_s"] = time.perf_counter() - started
            results["index"] = {"ef_search": index.ef_search, "candidates": index.candidates}
            truth = Truth(queries, data)
            channel, stub = searcher_stub(server.port)
            with channel:
                never = threading.Event()
                search_loop(stub, queries, lambda: truth.best, never, limit=len(queries))  # warm
                results["before"] = search_loop(stub, queries, lambda: truth.best, never, 400)
            print(f"before: {results['before']}", flush=True)
            results.update(
                add_while_searching(server.port, queries, truth, added, args.rows, args.rate)
            )
        finally:
            server.stop()
        # What the builds fitted for the fresh rows (searcher.cells), from the searcher's log.
        log = (Path(tmp) / "searcher.log").read_text(errors="replace").splitlines()
        results["fresh_cells"] = [line for line in log if ", a search scanning " in line]
    before = results["before"]
    for phase in ("during", "right_after", "folded"):
        results[phase]["p50_over_before"] = results[phase]["p50_ms"] / before["p50_ms"]
        results[phase]["recall_minus_before"] = (
            results[phase]["recall_at_10"] - before["recall_at_10"]
        )
        print(f"{phase}: {results[phase]}", flush=True)
    print(
        f"added {results['added_per_s']:.0f} rows/s, own first hit {results['own_first_hit']:.3f}, "
        f"{results['fresh_rows_right_after']} fresh right after, folded in "
        f"{results['folded_after_s']:.1f} s and measured again: GetCollection says "
        f"{results['reported_recall']:.4f} ({results['reported_minus_measured']:+.4f})",
        flush=True,
    )
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
