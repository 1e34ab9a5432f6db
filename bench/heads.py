"""What a second head costs the embedder: one head (logits) against two from one pass (logits,gem).

    python bench/heads.py [--images 600] [--rounds 3] [--out bench/results/heads.json]

Generated photo-like JPEGs (500×375) are streamed through EmbedStream as an ingest streams
them (messages of 16 images, bulk), to an embedder in its own process with default settings
(random weights, seed 0: weights do not change the cost), asking by name for the heads after
the first (whose vector every result carries), as a client that stores both would. The two
embedders take turns, `--rounds` times each, so a drift of the machine falls on both.
Reported: images/s per round and the median, response bytes per image, and the ratio of two
heads' rate to one's (issue 25 asks ≥ 0.9 of one head's ingest rate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._processes import write_results  # noqa: E402
from bench.embedder import Server  # noqa: E402
from imgsearch.v1 import embedder_pb2 as pb  # noqa: E402
from tests.embedder_helpers import embedder_stub  # noqa: E402
from tests.images import jpeg  # noqa: E402

HEADS = ("logits", "logits,gem")
MESSAGE_IMAGES = 16


def stream(port: int, data: list[bytes], heads: list[str]) -> tuple[float, float]:
    """(images/s, response bytes per image) of one EmbedStream over `data`."""

    def requests() -> Iterator[pb.EmbedStreamRequest]:
        for start in range(0, len(data), MESSAGE_IMAGES):
            chunk = data[start : start + MESSAGE_IMAGES]
            images = [pb.Image(key=str(start + i), data=d) for i, d in enumerate(chunk)]
            yield pb.EmbedStreamRequest(images=images, heads=heads)

    channel, stub = embedder_stub(port)
    with channel:
        received, started = 0, time.perf_counter()
        for response in stub.EmbedStream(requests(), timeout=900):
            assert all(r.WhichOneof("outcome") == "vector" for r in response.results)
            assert all(set(r.vectors) == set(heads) for r in response.results)
            received += response.ByteSize()
        return len(data) / (time.perf_counter() - started), received / len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heads.json")
    args = parser.parse_args()
    print(f"generating {args.images} JPEGs of 500×375", flush=True)
    data = [jpeg(i, (500, 375)) for i in range(args.images)]
    rounds: dict[str, list[float]] = {head: [] for head in HEADS}
    sizes: dict[str, float] = {}
    for round_ in range(args.rounds):
        for head in HEADS:
            server = Server(["--head", head, "--duplicate-probes", "0"])
            try:
                named = head.split(",")[1:]
                stream(server.port, data[:64], named)  # warm up
                rate, size = stream(server.port, data, named)
            finally:
                server.stop()
            rounds[head].append(rate)
            sizes[head] = size
            print(f"round {round_ + 1}, head {head}: {rate:.1f} img/s, {size:.0f} B/image")
    results: dict[str, Any] = {
        "images": len(data),
        "message_images": MESSAGE_IMAGES,
        "rounds": rounds,
        "median_images_per_s": {head: statistics.median(r) for head, r in rounds.items()},
        "response_bytes_per_image": sizes,
    }
    median = results["median_images_per_s"]
    results["two_over_one"] = median["logits,gem"] / median["logits"]
    print(f"two heads / one head: {results['two_over_one']:.3f}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
