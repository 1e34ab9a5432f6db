"""Vector data sets for the searcher benchmarks: synthetic clustered vectors, and real embedder
output (SqueezeNet 1.1 of generated photo-like images), computed once and cached.

    python bench/datasets.py --rows 100000 --head logits   # fill the cache ahead of a benchmark

The embedder vectors come from the embedder's own model and preprocessing
(`embedder.model.EmbeddingModel`, random weights with a fixed seed: no weights can be
downloaded here, and the weights do not change the cost) over `tests.images.textured_photo`
pictures: ~10 per scene on average, as photos come in series. Queries are other pictures of the
same scenes, never stored ones. Cached under bench/.cache/ (about 400 MB per 100k vectors), a
file per 100k pictures: a fill of a million (~20 minutes per 100k on 2 cores) stopped part way
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.searcher_helpers import clustered_vectors  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
# Bump when the pictures or the way they are embedded change: the cache is keyed by it.
EMBEDDER_DATA_VERSION = 1
QUERY_SEED_OFFSET = 10_000_000
MORE_SEED_OFFSET = 20_000_000
IMAGES_PER_SCENE = 10
SIZES = ((500, 375), (375, 500), (640, 480), (400, 300))


CLUSTERED_CHUNK = 100_000
# Pictures per cache file: an interrupted fill loses at most one file's work.
EMBEDDED_CHUNK = 100_000


def clustered(rows: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The searcher tests' mixture (seed 1, queries seed 2); past 100k rows drawn 100k at a
    time (seeds 1001, 1002, ...) from the same mixture, to bound the memory it takes."""
    if rows <= CLUSTERED_CHUNK:
        return clustered_vectors(rows, seed=1), clustered_vectors(queries, seed=2)
    data = np.empty((rows, 1000), np.float32)
    for chunk, start in enumerate(range(0, rows, CLUSTERED_CHUNK)):
        stop = min(start + CLUSTERED_CHUNK, rows)
        data[start:stop] = clustered_vectors(stop - start, seed=1001 + chunk)
    return data, clustered_vectors(queries, seed=2)


def embedder_vectors(
    rows: int, queries: int, *, head: str = "logits", model: str = "squeezenet1_1"
) -> tuple[np.ndarray, np.ndarray]:
    """(stored vectors, query vectors) of generated pictures through the embedder's model."""
    scenes = max(1, rows // IMAGES_PER_SCENE)
    data = _cached(
        f"{model}-{head}-v{EMBEDDER_DATA_VERSION}-rows{rows}", model, head, 0, rows, scenes
    )
    query = _cached(
        f"{model}-{head}-v{EMBEDDER_DATA_VERSION}-queries{queries}-of{rows}",
        model, head, QUERY_SEED_OFFSET, queries, scenes,
    )  # fmt: skip
    return data, query


def embedder_more(rows: int, count: int, *, head: str = "logits") -> np.ndarray:
    """`count` more pictures of the scenes of `embedder_vectors(rows, ...)`: new rows to add."""
    scenes = max(1, rows // IMAGES_PER_SCENE)
    name = f"squeezenet1_1-{head}-v{EMBEDDER_DATA_VERSION}-more{count}-of{rows}"
    return _cached(name, "squeezenet1_1", head, MORE_SEED_OFFSET, count, scenes)


def _cached(name: str, model: str, head: str, first: int, count: int, scenes: int) -> np.ndarray:
    if count > EMBEDDED_CHUNK:
        return _cached_in_parts(name, model, head, first, count, scenes)
    path = CACHE / f"{name}.npy"
    if path.exists():
        return np.load(path)
    print(f"embedding {count} generated pictures ({name}); cached in {path}", flush=True)
    vectors = _embed(model, head, first, count, scenes)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.rename(path)
    return vectors


def _cached_in_parts(
    name: str, model: str, head: str, first: int, count: int, scenes: int
) -> np.ndarray:
    out: np.ndarray | None = None
    for start in range(0, count, EMBEDDED_CHUNK):
        size = min(EMBEDDED_CHUNK, count - start)
        part_name = f"{name}-part{start // EMBEDDED_CHUNK}"
        part = _cached(part_name, model, head, first + start, size, scenes)
        if out is None:
            out = np.empty((count, part.shape[1]), part.dtype)
        out[start : start + size] = part
    assert out is not None
    return out


def picture_tensor(seed: int, scenes: int) -> np.ndarray:
    """Picture `seed` (scene drawn from the seed), preprocessed as the embedder does."""
    from embedder.preprocessing import preprocess
    from tests.images import textured_photo

    scene = int(np.random.default_rng(seed).integers(0, scenes))
    size = SIZES[scene % len(SIZES)]
    return preprocess(textured_photo(seed, size, scene=scene))


def _picture_batches(first: int, count: int, scenes: int, batch: int) -> Iterator[np.ndarray]:
    # Pictures are drawn and preprocessed in worker processes while the model runs here.
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, initializer=_quiet_torch) as pool:
        seeds = range(first, first + count)
        tensors = pool.imap(_picture_for_pool, ((s, scenes) for s in seeds), chunksize=16)
        while chunk := [t for _, t in zip(range(batch), tensors, strict=False)]:
            yield np.stack(chunk)


def _quiet_torch() -> None:
    import torch

    torch.set_num_threads(1)


def _picture_for_pool(args: tuple[int, int]) -> np.ndarray:
    return picture_tensor(*args)


def _embed(model: str, head: str, first: int, count: int, scenes: int) -> np.ndarray:
    from embedder.model import EmbeddingModel, ModelSpec

    network = EmbeddingModel(ModelSpec(name=model, weights="random", seed=0, head=head))
    out = np.empty((count, network.info.dim), np.float32)
    done, started = 0, time.monotonic()
    for batch in _picture_batches(first, count, scenes, batch=32):
        out[done : done + len(batch)] = network.forward(batch)
        done += len(batch)
        if done % 3200 < len(batch) or done == count:
            rate = done / (time.monotonic() - started)
            print(f"  {done}/{count} pictures, {rate:.0f}/s", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--head", default="logits")
    args = parser.parse_args()
    data, queries = embedder_vectors(args.rows, args.queries, head=args.head)
    norm = float(np.linalg.norm(data, axis=1).mean())
    print(f"{data.shape} stored, {queries.shape} queries, mean norm {norm:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
