"""An embedder model read from an ONNX file, served with ONNX Runtime, Pillow and numpy: no torch.

`imgsearch-embedder-export` (embedder.export) writes the file: the network's graph, and beside
it in the graph's metadata everything the vectors depend on: model, weights, head,
preprocessing, the weights' fingerprint (so a collection still refuses vectors of another
model), and the vectors torch computed for a few generated probe pictures. Loading runs those
pictures through this preprocessing and this runtime and refuses the file unless the vectors
come out the same: an altered file, a graph from another preprocessing or a runtime that
computes differently never serves vectors under the fingerprint.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from embedder import preprocessing
from embedder.onnx_session import RUNTIME_TOLERANCE, OnnxSession, relative_error
from embedder.spec import HeadInfo, ModelInfo, parse_heads
from imgsearch.errors import ModelLoadError
from imgsearch.photos import textured_photo

logger = logging.getLogger(__name__)

FORMAT = "1"
KEY_PREFIX = "imgsearch."
# What a file must say about itself, each under KEY_PREFIX in the graph's metadata_props.
KEYS = (
    "format",
    "model",
    "weights_source",
    "weights",
    "head",
    "dim",
    "preprocessing",
    "fingerprint",
    "probe_vectors",
)
# Written for a model of several heads (their names, kinds, widths and fingerprints, as JSON);
# a file without it serves the one head its other keys describe.
HEADS_KEY = "heads"
PROBES = 4
PROBE_SIZE = (400, 300)


def probe_pictures() -> list[Image.Image]:
    """The generated photos whose vectors travel with an exported model."""
    return [textured_photo(seed, PROBE_SIZE, scene=seed) for seed in range(PROBES)]


def encode_vectors(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def decode_vectors(text: str, dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(-1, dim)


class OnnxFileModel:
    """A model exported by `imgsearch-embedder-export`, checked and ready for batches."""

    device_type = "cpu"

    def __init__(self, path: str, threads: int = 0) -> None:
        started = time.monotonic()
        file = Path(path)
        try:
            graph = file.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the model file {path}: {exc.strerror}") from None
        threads = threads or len(os.sched_getaffinity(0))
        try:
            self._session = OnnxSession(graph, threads)
        except Exception as exc:  # onnxruntime raises its own classes for every malformed file
            raise ModelLoadError(
                f"{path} is not an ONNX graph ONNX Runtime can load: {str(exc)[:200]}"
            ) from None
        meta = _imgsearch_metadata(self._session.metadata(), path)
        heads = _heads(meta)
        self._prepare = preprocessing.for_head(meta["head"])
        self.info = ModelInfo(
            model=meta["model"],
            weights_source=meta["weights_source"],
            weights=meta["weights"],
            head=heads[0].name,
            dim=heads[0].dim,
            preprocessing=meta["preprocessing"],
            device="cpu",
            runtime="onnx-file",
            fingerprint=heads[0].fingerprint,
            heads=heads,
        )
        self._check_probes(decode_vectors(meta["probe_vectors"], self.info.width), path)
        if self.info.weights_source == "random":
            logger.warning(
                "RANDOM WEIGHTS (%s, exported to %s): vectors from this embedder carry no "
                "meaning; use them for tests and benchmarks only",
                self.info.weights,
                path,
            )
        logger.info(
            "loaded %s (%s weights: %s, head %s, %d-d) from %s with ONNX Runtime %s in %.1f s; "
            "its probe vectors match the export's",
            self.info.model,
            self.info.weights_source,
            self.info.weights,
            meta["head"],
            self.info.width,
            path,
            self._session.version,
            time.monotonic() - started,
        )

    def _check_probes(self, expected: np.ndarray, path: str) -> None:
        got = self.forward(preprocessing.stack([self._prepare(p) for p in probe_pictures()]))
        if got.shape != expected.shape:
            raise ModelLoadError(
                f"{path}: the graph gives {got.shape[1]}-d vectors, its metadata says "
                f"{expected.shape[1]}-d"
            )
        error = relative_error(got, expected)
        if error > RUNTIME_TOLERANCE:
            raise ModelLoadError(
                f"{path}: the probe pictures' vectors differ from those recorded at export by "
                f"{error:.2e} (relative; the limit is {RUNTIME_TOLERANCE:.0e}): the file was "
                "altered, or this preprocessing or ONNX Runtime computes differently; export it "
                "again"
            )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._prepare(image)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self._session(batch)

    def warm_up(self, batch_size: int) -> None:
        for n in sorted({1, batch_size}):
            self.forward(np.zeros((n, 3, preprocessing.CROP, preprocessing.CROP), np.float32))


def _imgsearch_metadata(props: dict[str, str], path: str) -> dict[str, str]:
    """The file's own description, checked for what this embedder can serve."""
    meta = {key: props[KEY_PREFIX + key] for key in (*KEYS, HEADS_KEY) if KEY_PREFIX + key in props}
    missing = [key for key in KEYS if key not in meta]
    if missing:
        raise ModelLoadError(
            f"{path} was not written by imgsearch-embedder-export (its metadata lacks "
            f"{', '.join(KEY_PREFIX + key for key in missing)}): export the model with it"
        )
    if meta["format"] != FORMAT:
        raise ModelLoadError(
            f"{path} has model-file format {meta['format']}; this embedder reads format {FORMAT}"
        )
    try:
        parse_heads(meta["head"])
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    if meta["preprocessing"] != preprocessing.description(meta["head"]):
        raise ModelLoadError(
            f"{path} was exported for the preprocessing {meta['preprocessing']!r}, not this "
            f"embedder's {preprocessing.description(meta['head'])!r}: export it again"
        )
    return meta


def describe_heads(heads: tuple[HeadInfo, ...]) -> str:
    """The HEADS_KEY entry of a model of several heads."""
    return json.dumps([vars(head) for head in heads])


def _heads(meta: dict[str, str]) -> tuple[HeadInfo, ...]:
    """The heads a file serves: those its HEADS_KEY entry lists, or its one head."""
    if HEADS_KEY in meta:
        try:
            return tuple(HeadInfo(**head) for head in json.loads(meta[HEADS_KEY]))
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"the model file's {KEY_PREFIX + HEADS_KEY} cannot be read ({exc}): export it again"
            ) from None
    return (
        HeadInfo(
            name=meta["head"],
            kind=meta["head"],
            dim=int(meta["dim"]),
            fingerprint=meta["fingerprint"],
            preprocessing=meta["preprocessing"],
        ),
    )
