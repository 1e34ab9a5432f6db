"""The embedder's configuration: CLI flags, then IMGSEARCH_EMBEDDER_* variables, then defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from embedder.batcher import BatcherConfig
from embedder.decode import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DecodeLimits
from embedder.spec import ModelSpec
from imgsearch import defaults
from serving import config as serving_config
from serving.config import (
    SERVING_HELP,
    Range,
    ServingConfig,
    check_ranges,
    parse_dataclass_config,
)

ENV_PREFIX = "IMGSEARCH_EMBEDDER_"

# Batch sizes measured best per device (bench/embedder.py): on the 2-core CPUs batch 8 beats
# 16 and 32; a GPU wants far larger batches to be busy.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


@dataclass(frozen=True)
class ForwardPlan:
    """How the model's passes use the machine."""

    workers: int  # batches of one lane through the model at once
    threads: int  # threads each pass computes on (0: the runtime's default)


@dataclass(frozen=True)
class EmbedderConfig(ServingConfig):
    """Every setting of the embedder; `--help` lists each with its variable and default."""

    address: str = defaults.EMBEDDER_BIND
    max_concurrent_rpcs: int = 256
    model_file: str = ""
    model: str = defaults.MODEL
    weights: str = defaults.WEIGHTS
    head: str = defaults.HEAD
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    runtime: str = defaults.RUNTIME
    max_batch_size: int = 0
    max_delay_ms: float = 5.0
    max_queue_images: int = 512
    decode_workers: int = 2
    # One pass at a time: on the 2-core CPUs a single-threaded pass per core did not beat one
    # pass on both cores at 16 clients, and a lone image took ~4 ms longer (bench/RESULTS.md).
    forward_workers: int = 1
    batches_ahead: int = BatcherConfig.batches_ahead
    max_interactive_run: int = BatcherConfig.max_interactive_run
    max_images_per_request: int = 256
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    duplicate_probes: int = 16

    def model_spec(self, device_type: str = "cpu") -> ModelSpec:
        return ModelSpec(
            name=self.model,
            weights=self.weights,
            head=self.head,
            seed=self.seed,
            device=self.device,
            threads=self.forward_plan(device_type).threads,
            runtime=self.runtime,
        )

    def forward_plan(self, device_type: str) -> ForwardPlan:
        """One pass at a time on --threads (the runtime's default when 0); or, with
        --forward-workers N on CPU, N passes at once sharing the cores (--threads, or every core
        this process may run on)."""
        if device_type != "cpu" or self.forward_workers == 1:
            return ForwardPlan(self.forward_workers, self.threads)
        cores = self.threads or len(os.sched_getaffinity(0))
        return ForwardPlan(self.forward_workers, max(1, cores // self.forward_workers))

    def __post_init__(self) -> None:
        # A zero here would start a server that fails at its first image, or never answers.
        check_ranges(self, _RANGES, env_name)

    def batcher_config(self, device_type: str) -> BatcherConfig:
        return BatcherConfig(
            max_batch_size=self.max_batch_size or DEFAULT_BATCH_SIZE.get(device_type, 8),
            max_delay_ms=self.max_delay_ms,
            max_queue_images=self.max_queue_images,
            decode_workers=self.decode_workers,
            forward_workers=self.forward_plan(device_type).workers,
            batches_ahead=self.batches_ahead,
            max_interactive_run=self.max_interactive_run,
        )

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_image_bytes=self.max_image_bytes, max_image_pixels=self.max_image_pixels
        )


HELP = {
    "model_file": "an ONNX file written by imgsearch-embedder-export, served by ONNX Runtime "
    "alone (no torch needed); the model, weights and head are then the file's",
    "model": "torchvision model name (squeezenet1_1, resnet50, ...)",
    "weights": "imagenet (torchvision's, from the TORCH_HOME cache), a state_dict file path, "
    "or random (tests and benchmarks only: results are meaningless)",
    "head": "logits (the classifier output) or gem (uniform borders trimmed, input standardised "
    "per image, GeM-pooled last conv map, L2-normalised: robust to brightness, contrast and "
    "screenshot frames); or logits,gem: both from one forward pass over the tutorial's input "
    "(that GeM vector without trimming or standardising), the first in each result's vector, "
    "both by name when a request asks (SqueezeNet and ResNet models)",
    "seed": "seed for --weights random",
    "device": "auto, cpu or cuda[:N]",
    "threads": "CPU threads for the model (0: one per core), shared among its forward workers",
    "runtime": "auto (ONNX Runtime on CPU when installed and matching torch, else torch), "
    "torch or onnx",
    "max_batch_size": "largest batch run through the model (0: 8 on CPU, 64 on CUDA)",
    "max_delay_ms": "longest an image waits for its batch to fill",
    "max_queue_images": "images in flight at once; more get RESOURCE_EXHAUSTED",
    "decode_workers": "threads decoding and preprocessing images",
    "forward_workers": "batches of one lane run through the model at once, on CPU each on an "
    "equal share of --threads (one at a time measured best on 2 cores: bench/RESULTS.md)",
    "batches_ahead": "full batches of one lane formed while its passes run, each starting the "
    "moment a pass ends (0: the next batch is formed when the model frees)",
    "max_interactive_run": "while bulk images (an import's) wait, at most this many turns in a "
    "row go to interactive ones (a search's) that are served first",
    "max_images_per_request": "most images in one request message",
    "max_image_bytes": "largest encoded image",
    "max_image_pixels": "most pixels (width × height) in one image",
    "duplicate_probes": "generated probe photos (each with 8 edits) the duplicate distance is "
    "measured on at start-up; 0 skips it (GetModelInfo then suggests none)",
    **SERVING_HELP,
}

_RANGES = {
    **dict.fromkeys(
        (
            "decode_workers",
            "forward_workers",
            "max_queue_images",
            "max_interactive_run",
            "max_images_per_request",
            "max_image_bytes",
            "max_image_pixels",
        ),
        Range(1),
    ),
    **dict.fromkeys(("threads", "max_batch_size"), Range(1, zero="the default choice")),
    **dict.fromkeys(("max_delay_ms", "batches_ahead", "duplicate_probes"), Range(0)),
}


def env_name(field_name: str) -> str:
    return serving_config.env_name(ENV_PREFIX, field_name)


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> EmbedderConfig:
    return parse_dataclass_config(
        EmbedderConfig,
        prog="imgsearch-embedder",
        description="Serve imgsearch.v1.EmbedderService: image bytes to vectors.",
        help=HELP,
        prefix=ENV_PREFIX,
        argv=argv,
        environ=environ,
    )
