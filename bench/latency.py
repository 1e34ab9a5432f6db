"""Latency benchmark: a person's search by image while a bulk import runs on the same stack.

    python bench/latency.py [--import-images 5000] [--searches 60] [--out FILE.json]

`imgsearch up --weights random` (embedded PostgreSQL; the searcher and the embedder in its
process) with a collection of 200 photos. In one run:

- import alone: `imgsearch ingest` of `--import-images` photo-like JPEGs (500×375) into another
  collection, as its own process: its rate, the baseline for the import's rate below;
- idle: search by image (as `ImageSearchClient.search_image` does: embed one JPEG, then search
  the 200; the two calls timed apart),
  `--searches` times, one after another with a person's pause between them: p50 and p95;
- busy: the same searches while the same import runs again (into a third collection, so that
  what a search scans stays the same): p50 and p95, and the import's own rate;
- duplicates: the same searches while FindDuplicates scans another collection of
  `--duplicates-rows` clustered 1000-d vectors (loaded and indexed first; the scan is cancelled
  once the searches are done).

Goals (issue 23): busy p50 ≤ 2 × idle p50, busy p95 ≤ 4 × idle p95, import rate while searched
≥ 0.9 × alone; p50 during the duplicate scan ≤ 2 × idle.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._loading import loaded_collection  # noqa: E402
from bench._processes import write_results  # noqa: E402
from bench.ingest import start_stack, timed_ingest  # noqa: E402
from bench.searcher import percentile_ms  # noqa: E402
from imgsearch import ImageSearchClient  # noqa: E402
from imgsearch.v1 import searcher_pb2 as pb  # noqa: E402
from tests.images import jpeg  # noqa: E402
from tests.searcher_helpers import searcher_stub  # noqa: E402

COLLECTION = "photos"
DUPLICATES = "scanned"
PAUSE_S = 0.2  # between one person's searches


def write_photos(folder: Path, count: int, first_seed: int) -> list[Path]:
    paths = []
    for n in range(count):
        path = folder / f"label{n % 10}" / f"{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(first_seed + n, (500, 375)))
        paths.append(path)
    return paths


def search_until(
    client: ImageSearchClient, queries: list[Path], *, count: int, stop: threading.Event | None
) -> list[tuple[float, float]]:
    """Search by image one query after another (a pause between), `count` times, or until
    `stop` is set when it is given: each search's seconds embedding and searching. (What
    `search_image` does, in its two calls, to see where the time goes.)"""
    seconds = []
    i = 0
    while (stop is None and i < count) or (stop is not None and not stop.is_set()):
        data = queries[i % len(queries)].read_bytes()
        started = time.perf_counter()
        (vector,) = client.embed([data], priority="interactive")
        embedded = time.perf_counter()
        assert not isinstance(vector, Exception), vector
        hits = client.search_vector(vector, 10, collection=COLLECTION)
        seconds.append((embedded - started, time.perf_counter() - embedded))
        assert hits, "a search found nothing"
        i += 1
        time.sleep(PAUSE_S)
    return seconds


def summary(seconds: list[tuple[float, float]]) -> dict[str, Any]:
    total = [embed + search for embed, search in seconds]
    return {
        "searches": len(seconds),
        "p50_ms": percentile_ms(total, 50),
        "p95_ms": percentile_ms(total, 95),
        "embed_p50_ms": percentile_ms([embed for embed, _ in seconds], 50),
        "search_p50_ms": percentile_ms([search for _, search in seconds], 50),
    }


def during_duplicates(
    client: ImageSearchClient, queries: list[Path], searcher: str, rows: int, count: int
) -> dict[str, Any]:
    """`count` searches while FindDuplicates scans a collection of `rows` clustered vectors."""
    port = int(searcher.rsplit(":", 1)[1])
    data, _ = datasets.clustered(rows, 1)
    loaded_collection(port, DUPLICATES, data)
    del data
    channel, stub = searcher_stub(port)
    with channel:
        request = pb.FindDuplicatesRequest(collection=DUPLICATES, max_distance=1.0)
        call = stub.FindDuplicates(request, timeout=7200)
        events: list[Any] = []

        def scan() -> None:
            try:
                events.extend(call)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise

        scanning = threading.Thread(target=scan)
        scanning.start()
        deadline = time.monotonic() + 600
        while not events:  # its first progress event: the scan has begun
            assert time.monotonic() < deadline and scanning.is_alive(), "no scan"
            time.sleep(0.05)
        seconds = search_until(client, queries, count=count, stop=None)
        scanned_all_along = scanning.is_alive()
        call.cancel()
        scanning.join()
    assert scanned_all_along, "the duplicate scan ended before the searches: use more rows"
    return summary(seconds) | {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--import-images", type=int, default=5000)
    parser.add_argument("--searches", type=int, default=60, help="idle searches")
    parser.add_argument(
        "--duplicates-rows", type=int, default=100_000, help="rows FindDuplicates scans (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"import_images": args.import_images, "pause_s": PAUSE_S}
    with tempfile.TemporaryDirectory(prefix="imgsearch-latency-") as tmp:
        photos = write_photos(Path(tmp) / "photos", 200, first_seed=0)
        imported = Path(tmp) / "import"
        write_photos(imported, args.import_images, first_seed=10_000)
        process, embedder, searcher = start_stack(Path(tmp) / "stack")
        try:
            timed_ingest(photos[0].parent.parent, embedder, searcher, COLLECTION)
            results["import_alone"] = timed_ingest(imported, embedder, searcher, "import_alone")
            print(f"import alone: {results['import_alone']}", flush=True)
            with ImageSearchClient(embedder, searcher, collection=COLLECTION) as client:
                search_until(client, photos[:10], count=10, stop=None)  # warm up
                idle = search_until(client, photos, count=args.searches, stop=None)
                results["idle"] = summary(idle)
                print(f"idle: {results['idle']}", flush=True)
                done = threading.Event()
                busy: list[tuple[float, float]] = []
                searching = threading.Thread(
                    target=lambda: busy.extend(search_until(client, photos, count=0, stop=done))
                )
                searching.start()
                try:
                    results["import_searched"] = timed_ingest(
                        imported, embedder, searcher, "import"
                    )
                finally:
                    done.set()
                    searching.join()
                results["busy"] = summary(busy)
                print(f"busy: {results['busy']}", flush=True)
                if args.duplicates_rows:
                    results["duplicates"] = during_duplicates(
                        client, photos, searcher, args.duplicates_rows, args.searches
                    )
                    print(f"during FindDuplicates: {results['duplicates']}", flush=True)
        finally:
            process.terminate()
            process.communicate(timeout=60)
    idle_s, busy_s = results["idle"], results["busy"]
    results["busy_p50_over_idle"] = busy_s["p50_ms"] / idle_s["p50_ms"]
    results["busy_p95_over_idle"] = busy_s["p95_ms"] / idle_s["p95_ms"]
    results["import_rate_searched_over_alone"] = (
        results["import_searched"]["images_per_s"] / results["import_alone"]["images_per_s"]
    )
    ratios = ["busy_p50_over_idle", "busy_p95_over_idle", "import_rate_searched_over_alone"]
    if "duplicates" in results:
        results["duplicates_p50_over_idle"] = results["duplicates"]["p50_ms"] / idle_s["p50_ms"]
        ratios.append("duplicates_p50_over_idle")
    for key in ratios:
        print(f"{key}: {results[key]:.2f}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
