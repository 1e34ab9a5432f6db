"""An embedder in its own process for bench/embedder.py: prints its port, then answers each
line on stdin ("stats" or "reset") with the batcher's counters as one JSON line."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedder.batcher import BatcherStats  # noqa: E402
from embedder.config import parse_config  # noqa: E402
from embedder.server import Embedder  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    embedder = Embedder(parse_config(sys.argv[1:])).start()
    print(json.dumps({"port": embedder.port, "info": dataclasses.asdict(embedder.model.info)}))  # type: ignore[union-attr]
    sys.stdout.flush()
    assert embedder.batcher is not None
    for line in sys.stdin:
        if line.strip() == "reset":
            embedder.batcher.stats = BatcherStats()
        stats = embedder.batcher.stats
        print(
            json.dumps(
                {
                    "images": stats.images,
                    "batches": stats.batches,
                    "mean_batch_size": stats.mean_batch_size,
                    "batch_sizes": dict(stats.batch_sizes),
                    "decode_seconds": stats.decode_seconds,
                    "preprocess_seconds": stats.preprocess_seconds,
                    "forward_seconds": stats.forward_seconds,
                }
            ),
            flush=True,
        )
    embedder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
