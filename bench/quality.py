"""Result quality: does an edited copy of a picture find its original, and do the duplicate
groups at the embedder's own threshold hold the right pictures?

    python bench/quality.py                       # all models, ~20 minutes on 2 cores
    python bench/quality.py --models squeezenet1_1:gem --originals 100
    python bench/quality.py --stack               # duplicates on the stack as `imgsearch up` runs

A corpus of generated photo-like pictures (embedder.probes.textured_photo: lit backdrops, fractal
texture at several scales, soft shapes, blur and sensor noise, at natural sizes; originals come
in pairs from the same scene, the near-misses that make the task hard) plus distractors. Every
original is edited in each way of embedder.probes.EDITS (JPEG q50-q90, resize 50-90%, crop
80-95%, brightness ±8/15%, contrast, rotation ±2/5°, flip, overlaid text, screenshot padding),
saved as a JPEG as people do, and searched for among the corpus by exact L2 distance: top-1 and
recall@10 of the original, per edit kind. Then the duplicate groups: the corpus plus the edited
copies of some originals, joined within the distance the embedder calibrates at start-up
(embedder.calibration, on probes that are not in this corpus), grouped as FindDuplicates groups
them (each member within the distance of every other), scored by pairs against the true groups.

Every model runs with random weights and a fixed seed (no weights can be downloaded here), on
the embedder's own model, preprocessing and runtime (embedder.model). Results go to
bench/results/quality.json; bench/RESULTS.md quotes them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedder.calibration import calibrate  # noqa: E402
from embedder.model import EmbeddingModel, GeMHead, ModelSpec  # noqa: E402
from embedder.preprocessing import preprocess  # noqa: E402
from embedder.probes import EDITS  # noqa: E402
from imgsearch import defaults  # noqa: E402
from imgsearch.photos import textured_photo  # noqa: E402
from searcher.grouping import Neighbours  # noqa: E402

SIZES = ((500, 375), (375, 500), (640, 480), (400, 300), (800, 600))
# Far from the seeds embedder.calibration's probes use (0..probes), so the threshold is never
# measured on the pictures it is judged on.
CORPUS_SEED = 100_000
GOAL_TOP1 = 0.97
GOAL_KIND_TOP1 = 0.85
GOAL_DUPLICATES = 0.95
DEFAULT_MODELS = (
    "squeezenet1_1:logits,squeezenet1_1:gem,squeezenet1_1:gem:plain,squeezenet1_1:gem:untrimmed,"
    "squeezenet1_1:gem:centred,squeezenet1_1:gem:flip-averaged,resnet18:logits,resnet18:gem,"
    "resnet50:gem"
)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def corpus(originals: int, distractors: int) -> list[bytes]:
    """Originals first (pairs from the same scene), then distractors, as stored JPEG files."""
    pictures = []
    for n in range(originals + distractors):
        scene = n // 2 if n < originals else n  # distractors: one picture per scene
        size = SIZES[n % len(SIZES)]
        pictures.append(jpeg_bytes(textured_photo(CORPUS_SEED + n, size, scene=scene), 92))
    return pictures


def edited_copies(stored: list[bytes], originals: int) -> dict[str, dict[str, list[bytes]]]:
    """kind -> strength -> the edited copy of each original, saved as a JPEG (the JPEG edit at
    its own quality)."""
    copies: dict[str, dict[str, list[bytes]]] = {}
    for kind, strengths in EDITS.items():
        copies[kind] = {}
        for name, edit in strengths.items():
            row = []
            for data in stored[:originals]:
                with Image.open(io.BytesIO(data)) as picture:
                    edited = edit(picture.convert("RGB"))
                row.append(jpeg_bytes(edited) if kind != "jpeg" else _reencoded(edited))
            copies[kind][name] = row
    return copies


def _reencoded(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")  # the JPEG edit already compressed it; keep exactly that
    return out.getvalue()


Forward = Callable[[np.ndarray], np.ndarray]


Prepare = Callable[[Image.Image], np.ndarray]


def embed(
    forward: Forward, files: list[bytes], batch: int = 16, prepare: Prepare = preprocess
) -> np.ndarray:
    vectors = []
    for start in range(0, len(files), batch):
        tensors = []
        for data in files[start : start + batch]:
            with Image.open(io.BytesIO(data)) as picture:
                tensors.append(prepare(picture.convert("RGB")))
        vectors.append(forward(np.stack(tensors)))
    return np.concatenate(vectors).astype(np.float64)


# Variants measured next to the head as served:
# - "plain": the GeM head as it was before this benchmark: neither the standardised input (what
#   makes it blind to brightness and contrast) nor the trimmed borders (embedder.borders);
# - "untrimmed": the served GeM head without the trimmed borders;
# - "centred": the mean vector of the stored collection subtracted and the result re-normalised
#   (the simplest whitening learned on the collection: random-weight features share one large
#   common direction). Not served: it would tie vectors to one collection;
# - "flip-averaged": the vectors of the picture and of its mirror image added and re-normalised,
#   mirror-invariant by construction at twice the cost of a forward pass. Not served.
VARIANTS = ("served", "plain", "untrimmed", "centred", "flip-averaged")
# Duplicate groups are also scored at these fractions of the calibrated distance.
THRESHOLD_SWEEP = (0.25, 0.5, 0.75, 1.0)


def load(name: str, head: str, seed: int, variant: str) -> EmbeddingModel:
    runtime = "torch" if variant == "plain" else "auto"  # the switch is in torch
    spec = ModelSpec(
        name=name, weights="random", seed=seed, head=head, device="cpu", runtime=runtime
    )
    model = EmbeddingModel(spec)
    if variant == "plain":
        if not isinstance(model.network, GeMHead):
            raise SystemExit("the plain variant is of the gem head")
        model.network.standardise = False
    return model


def centred(forward: Forward, centre: np.ndarray) -> Forward:
    def forward_centred(batch: np.ndarray) -> np.ndarray:
        vectors = forward(batch).astype(np.float64) - centre
        return np.asarray(
            vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        )

    return forward_centred


def flip_averaged(forward: Forward) -> Forward:
    def forward_both(batch: np.ndarray) -> np.ndarray:
        mirrored = np.ascontiguousarray(batch[..., ::-1])
        vectors = forward(batch).astype(np.float64) + forward(mirrored).astype(np.float64)
        return np.asarray(
            vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        )

    return forward_both


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.asarray(np.maximum(d, 0.0))


def retrieval(stored: np.ndarray, queries: np.ndarray) -> tuple[float, float]:
    """(top-1, recall@10) of original i for query i."""
    distances = squared_distances(queries, stored)
    own = distances[np.arange(len(queries)), np.arange(len(queries))]
    rank = (distances < own[:, None]).sum(axis=1)  # how many stored items lie nearer
    return float(np.mean(rank == 0)), float(np.mean(rank < 10))


def duplicate_groups(vectors: np.ndarray, max_distance: float) -> np.ndarray:
    """The groups of "within max_distance", formed by the searcher's own grouping (as
    FindDuplicates forms them): each item's group, named by its smallest item."""
    neighbours = Neighbours()
    squared = squared_distances(vectors, vectors)
    for i, j in zip(*np.nonzero(np.triu(squared <= max_distance**2, k=1)), strict=True):
        neighbours.add(int(i), int(j), float(np.sqrt(max(squared[i, j], 0.0))))
    group_of = np.arange(len(vectors))
    for ids in neighbours.groups():
        group_of[ids] = ids[0]
    return group_of


def pair_scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of "these two are duplicates" over all pairs of items."""
    same_predicted = predicted[:, None] == predicted[None, :]
    same_true = truth[:, None] == truth[None, :]
    upper = np.triu(np.ones_like(same_true), k=1)
    both = int((same_predicted & same_true & upper).sum())
    said = int((same_predicted & upper).sum())
    real = int((same_true & upper).sum())
    return (both / said if said else 1.0), (both / real if real else 1.0)


def quantiles(values: np.ndarray) -> dict[str, float]:
    return {
        "min": float(values.min()),
        "p01": float(np.quantile(values, 0.01)),
        "median": float(np.median(values)),
        "p95": float(np.quantile(values, 0.95)),
        "max": float(values.max()),
    }


def measure(
    name: str,
    head: str,
    seed: int,
    stored: list[bytes],
    copies: dict[str, dict[str, list[bytes]]],
    originals: int,
    duplicate_originals: int,
    variant: str = "served",
) -> dict[str, object]:
    started = time.monotonic()
    model = load(name, head, seed, variant)
    forward: Forward = flip_averaged(model.forward) if variant == "flip-averaged" else model.forward
    prepare: Prepare = preprocess if variant in ("plain", "untrimmed") else model.preprocess

    stored_vectors = embed(forward, stored, prepare=prepare)
    if variant == "centred":
        forward = centred(model.forward, stored_vectors.mean(axis=0))
        stored_vectors = embed(forward, stored, prepare=prepare)
    threshold = calibrate(forward, prepare, probes=16)
    kinds: dict[str, object] = {}
    ranks_top1: list[float] = []
    copy_distances: dict[str, np.ndarray] = {}
    copy_vectors: dict[str, np.ndarray] = {}
    for kind, strengths in copies.items():
        per_strength = {}
        distances = []
        for strength, files in strengths.items():
            vectors = embed(forward, files, prepare=prepare)
            copy_vectors[f"{kind} {strength}"] = vectors
            top1, recall10 = retrieval(stored_vectors, vectors)
            per_strength[strength] = {"top1": top1, "recall_at_10": recall10}
            ranks_top1 += [top1] * len(files)
            distances.append(np.linalg.norm(vectors - stored_vectors[:originals], axis=1))
        copy_distances[kind] = np.concatenate(distances)
        kinds[kind] = {
            "top1": float(np.mean([s["top1"] for s in per_strength.values()])),
            "recall_at_10": float(np.mean([s["recall_at_10"] for s in per_strength.values()])),
            "by_strength": per_strength,
            "distance_to_original": quantiles(copy_distances[kind]),
        }
    # Distinct pictures: every pair of stored pictures; same-scene pairs apart.
    between = np.sqrt(squared_distances(stored_vectors, stored_vectors))
    upper = np.triu_indices(len(stored_vectors), k=1)
    same_scene = np.array([i // 2 == j // 2 and j < originals for i, j in zip(*upper, strict=True)])
    distinct = between[upper]
    # Duplicate groups: the corpus plus every edited copy of the first few originals.
    picked = [v[:duplicate_originals] for v in copy_vectors.values()]
    items = np.vstack([stored_vectors, *picked])
    truth = np.concatenate(
        [np.arange(len(stored_vectors)), *[np.arange(duplicate_originals)] * len(picked)]
    )
    precision, recall = pair_scores(duplicate_groups(items, threshold.l2), truth)
    sweep = {}
    for fraction in THRESHOLD_SWEEP:
        p, r = pair_scores(duplicate_groups(items, fraction * threshold.l2), truth)
        sweep[str(fraction)] = {"precision": p, "recall": r}
    return {
        "model": name,
        "head": head,
        "variant": variant,
        "dim": int(stored_vectors.shape[1]),
        "top1_all_edits": float(np.mean(ranks_top1)),
        "kinds": kinds,
        "distinct_distance": quantiles(distinct[~same_scene]),
        "same_scene_distance": quantiles(distinct[same_scene]),
        "duplicate_threshold": threshold.l2,
        "calibration": threshold.note,
        "duplicates": {
            "items": len(items),
            "true_groups_with_copies": duplicate_originals,
            "precision": precision,
            "recall": recall,
            "at_fractions_of_the_threshold": sweep,
        },
        "seconds": time.monotonic() - started,
    }


def report(result: dict[str, object]) -> None:
    kinds = result["kinds"]
    assert isinstance(kinds, dict)
    title = f"{result['model']} / {result['head']} / {result['variant']}"
    print(f"\n{title}: top-1 over all edits {result['top1_all_edits']:.3f}")
    for kind, figures in kinds.items():
        d = figures["distance_to_original"]
        print(
            f"  {kind:<11} top-1 {figures['top1']:.3f}  recall@10 {figures['recall_at_10']:.3f}  "
            f"distance median {d['median']:.4g} p95 {d['p95']:.4g}"
        )
    print(f"  distinct pictures: {result['distinct_distance']}")
    print(f"  same scene:        {result['same_scene_distance']}")
    print(f"  duplicates at {result['duplicate_threshold']:.4g}: {result['duplicates']}")


def run_stacks(args: argparse.Namespace) -> None:
    """--stack: each head configuration on a fresh local stack, the same corpus and copies."""
    from bench._stack_quality import measure_stack, planted_copies

    stored = corpus(args.originals, args.distractors)
    planted = planted_copies(stored, args.planted)
    runs = []
    for head in args.stack_heads.split(";"):
        run = measure_stack(head, stored, planted)
        print(json.dumps(run, indent=2), flush=True)
        runs.append(run)
    out = Path(args.out).with_name("quality_stack.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rates = [run["ingest_images_per_s"] for run in runs]
    summary = {
        "originals": args.originals,
        "distractors": args.distractors,
        "planted": args.planted,
        "runs": runs,
        "ingest_first_over_last": rates[0] / rates[-1],
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="name:head[:variant],...")
    parser.add_argument("--originals", type=int, default=200, help="pictures that get edited")
    parser.add_argument("--distractors", type=int, default=800, help="other stored pictures")
    parser.add_argument(
        "--duplicate-originals", type=int, default=100,
        help="originals whose edited copies join the duplicate-group test",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    parser.add_argument(
        "--stack", action="store_true",
        help="duplicates on the local stack as a newcomer runs it (bench/_stack_quality.py)",
    )  # fmt: skip
    parser.add_argument(
        "--stack-heads", default=f"{defaults.STACK_HEAD};logits",
        help="the embedder heads of each stack run, separated by ';'",
    )  # fmt: skip
    parser.add_argument(
        "--planted", type=int, default=100, help="--stack: originals given one edited copy each"
    )
    args = parser.parse_args()
    if args.stack:
        run_stacks(args)
        return
    runs = []
    for entry in args.models.split(","):
        name, head, variant = (*entry.split(":"), "", "")[:3]
        if (variant or "served") not in VARIANTS:
            parser.error(f"variant {variant!r}: use one of {', '.join(VARIANTS)}")
        runs.append((name, head or "logits", variant or "served"))
    torch.manual_seed(args.seed)
    started = time.monotonic()
    stored = corpus(args.originals, args.distractors)
    copies = edited_copies(stored, args.originals)
    print(f"corpus of {len(stored)} and {sum(len(s) for s in copies.values())} edits per "
          f"original made in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    results = []
    for name, head, variant in runs:
        result = measure(
            name, head, args.seed, stored, copies, args.originals, args.duplicate_originals,
            variant,
        )  # fmt: skip
        report(result)
        results.append(result)
        goals = {
            "top1_all_edits": result["top1_all_edits"] >= GOAL_TOP1,  # type: ignore[operator]
            "every_kind_top1": all(
                k["top1"] >= GOAL_KIND_TOP1
                for k in result["kinds"].values()  # type: ignore[attr-defined]
            ),
            "duplicates": min(result["duplicates"]["precision"], result["duplicates"]["recall"])  # type: ignore[index]
            >= GOAL_DUPLICATES,
        }
        result["goals_met"] = goals
        Path(args.out).write_text(
            json.dumps(
                {"originals": args.originals, "distractors": args.distractors, "seed": args.seed,
                 "models": results},
                indent=2,
            )
        )  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
