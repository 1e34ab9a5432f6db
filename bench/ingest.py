"""Ingest benchmark: `imgsearch ingest` through the whole stack against the embedder alone,
into an empty collection and into one that already holds an indexed 100k.

    python bench/ingest.py [--images 1000] [--prefill 100000] [--out bench/results/ingest.json]

`imgsearch up` (embedded PostgreSQL + searcher + embedder; random weights, which cost the same as
trained ones) runs as its own process. On the same generated JPEGs (500×375, 10 labelled
folders), in one run:

- baseline: the embedder alone, one EmbedStream call of 16 images per message (what ingest sends
  per Embed call), vectors discarded;
- `imgsearch ingest FOLDER` as a process into an empty collection: files read, embedded,
  stored; its own images/s (from first image to last commit) and the process's wall time
  (including Python start-up and the check for already-stored ids);
- the same into a collection of the default index kind already holding `--prefill` vectors
  (embedder output of other pictures, or the clustered mixture: `--prefill-data`; what the
  ingest pays for does not depend on them) with its index built and its upkeep done: the path
  of a user adding photos to a collection every day. The rows it adds are fresh (off the graph)
  when it ends; how many is reported, and the upkeep folds them in afterwards.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import datasets  # noqa: E402
from bench._loading import upsert_all, wait_for_upkeep  # noqa: E402
from imgsearch.v1 import embedder_pb2 as pb  # noqa: E402
from imgsearch.v1 import searcher_pb2 as spb  # noqa: E402
from tests.embedder_helpers import embedder_stub  # noqa: E402
from tests.images import jpeg  # noqa: E402
from tests.searcher_helpers import searcher_stub  # noqa: E402


def start_stack(data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "up", "--data-dir", str(data_dir),
         "--embedder-port", "0", "--searcher-port", "0", "--weights", "random"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    addresses = {}
    for line in process.stdout:
        name, _, value = line.partition(" ")
        if name in ("embedder", "searcher"):
            addresses[name] = value.strip()
        if line.startswith("ready"):
            return process, addresses["embedder"], addresses["searcher"]
    raise RuntimeError("imgsearch up did not start")


def embed_stream_rate(address: str, files: list[Path], per_message: int = 16) -> float:
    def requests() -> Iterator[pb.EmbedStreamRequest]:
        for start in range(0, len(files), per_message):
            chunk = files[start : start + per_message]
            yield pb.EmbedStreamRequest(
                images=[pb.Image(key=str(p), data=p.read_bytes()) for p in chunk]
            )

    port = int(address.rsplit(":", 1)[1])
    channel, stub = embedder_stub(port)
    with channel:
        started = time.perf_counter()
        count = sum(len(r.results) for r in stub.EmbedStream(requests(), timeout=3600))
        elapsed = time.perf_counter() - started
    assert count == len(files)
    return len(files) / elapsed


def prefill(address: str, name: str, rows: int, data_set: str) -> dict[str, Any]:
    """A collection of the server's default kind holding `rows` vectors (embedder output, or
    the clustered mixture: what the ingest pays for does not depend on them), indexed and
    measured, before ingest adds to it."""
    port = int(address.rsplit(":", 1)[1])
    channel, stub = searcher_stub(port)
    with channel:
        stub.CreateCollection(spb.CreateCollectionRequest(name=name, dim=1000), timeout=60)
    if data_set == "embedder":
        data, _ = datasets.embedder_vectors(rows, 1)
    else:
        data, _ = datasets.clustered(rows, 1)
    upsert_all(port, name, data, first_id=1)
    index = wait_for_upkeep(port, name).index
    return {
        "rows": rows,
        "data_set": data_set,
        "build_s": index.build_seconds,
        "ef_search": index.ef_search,
        "candidates": index.candidates,
        "sample_recall": index.recall,
    }


def fresh_rows(address: str, name: str) -> int:
    """Rows the ingest left off the graph, for the upkeep to fold in."""
    channel, stub = searcher_stub(int(address.rsplit(":", 1)[1]))
    with channel:
        return int(stub.GetStats(spb.GetStatsRequest(collection=name), timeout=60).fresh_rows)


def timed_ingest(folder: Path, embedder: str, searcher: str, collection: str) -> dict[str, float]:
    started = time.perf_counter()
    ingest = subprocess.run(
        [sys.executable, "-m", "imgsearch.cli", "ingest", str(folder),
         "--embedder", embedder, "--searcher", searcher, "--collection", collection],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    wall = time.perf_counter() - started
    assert ingest.returncode == 0, ingest.stderr
    print(ingest.stdout.strip())
    reported = re.search(r"([0-9.]+) images/s", ingest.stdout)
    assert reported is not None and "ingested" in ingest.stdout
    images = int(re.search(r"ingested (\d+)", ingest.stdout).group(1))  # type: ignore[union-attr]
    return {"images_per_s": float(reported.group(1)), "wall_images_per_s": images / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--prefill", type=int, default=100_000, help="rows already indexed")
    parser.add_argument(
        "--prefill-data",
        choices=["embedder", "clustered"],
        default="embedder",
        help="what the indexed collection holds (embedder vectors take ~30 min to make, once)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"images": args.images}
    with tempfile.TemporaryDirectory(prefix="imgsearch-ingest-") as tmp:
        folder = Path(tmp) / "photos"
        files = []
        for n in range(args.images):
            path = folder / f"label{n % 10}" / f"{n:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(n, (500, 375)))
            files.append(path)
        process, embedder, searcher = start_stack(Path(tmp) / "stack")
        try:
            if args.prefill:
                print(f"prefilling a collection with {args.prefill} vectors …", flush=True)
                results["prefilled"] = prefill(searcher, "indexed", args.prefill, args.prefill_data)
                print(f"  {results['prefilled']}", flush=True)
            embed_stream_rate(embedder, files[:64])  # warm up
            results["embed_stream_images_per_s"] = embed_stream_rate(embedder, files)
            print(f"EmbedStream alone: {results['embed_stream_images_per_s']:.1f} img/s")
            results["into_empty"] = timed_ingest(folder, embedder, searcher, "empty")
            if args.prefill:
                results["into_indexed"] = timed_ingest(folder, embedder, searcher, "indexed")
                results["into_indexed"]["fresh_rows_after"] = fresh_rows(searcher, "indexed")
        finally:
            process.terminate()
            process.communicate(timeout=60)
    embed = results["embed_stream_images_per_s"]
    for target in ("into_empty", "into_indexed"):
        if target in results:
            results[target]["ratio_over_embed_stream"] = results[target]["images_per_s"] / embed
            results[target]["ratio_wall_over_embed_stream"] = (
                results[target]["wall_images_per_s"] / embed
            )
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
