"""The embedding model: a torchvision backbone, its weights, a head, and the tutorial's
preprocessing. No gRPC here; the batcher and the servicer sit on top.

Weights are never substituted silently: `imagenet` loads torchvision's published weights from
the TORCH_HOME cache (downloading them only if there is a network), a path loads a saved
state_dict, and `random` must be asked for by name and says so loudly.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from embedder import preprocessing
from embedder.onnx_session import RUNTIME_TOLERANCE, relative_error
from embedder.preprocessing import CROP, IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING, RESIZE
from embedder.spec import RUNTIMES, SHARED_PASS_GEM, HeadInfo, ModelInfo, ModelSpec, parse_heads
from imgsearch import defaults
from imgsearch.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingModel", "ModelInfo", "ModelSpec", "reference_transform"]


def reference_transform() -> transforms.Compose:
    """The source tutorial's preprocessing in torchvision, exactly: what
    `embedder.preprocessing` reproduces without torch (and is tested against)."""
    return transforms.Compose(
        [
            transforms.Resize(RESIZE),
            transforms.CenterCrop(CROP),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial axes: (mean x^p)^(1/p); p=1 is average pooling,
    p→∞ max pooling. p=3 as in the tutorial's "method 2"."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


class GeMHead(nn.Module):
    """Each image's channels standardised → last convolutional map → GeM → L2 normalisation.

    Standardising the input (zero mean, unit deviation per image and channel) makes the vector
    blind to changes of brightness and contrast, which are affine in each channel: they were the
    GeM head's weakest edits in bench/quality.py (see bench/RESULTS.md, "Result quality")."""

    # What the head computes, for the model fingerprint: vectors of an earlier GeM head (without
    # the standardised input or the trimmed borders) are then never mixed with these.
    IDENTITY = "gem/standardised-input/trimmed-borders"

    def __init__(self, trunk: nn.Module, *, standardise: bool = True) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = GeM()
        self.standardise = standardise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            mean = x.mean(dim=(2, 3), keepdim=True)
            deviation = x.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)
            x = (x - mean) / deviation
        return nn.functional.normalize(self.pool(self.trunk(x)), p=2.0, dim=1)


class SharedPassHeads(nn.Module):
    """Several heads from one forward pass: the trunk runs once over the tutorial's input, and
    each head reads its last convolutional map. The logits are the classifier's own output
    (its tail applied to that map); the GeM vector is pooled from the same map and
    L2-normalised. The output is the heads' vectors side by side, in `heads` order."""

    IDENTITY = {"logits": "logits", "gem": SHARED_PASS_GEM}

    def __init__(self, name: str, classifier: nn.Module, heads: tuple[str, ...]) -> None:
        super().__init__()
        self.trunk = convolutional_trunk(name, classifier)
        self.tail = classifier_tail(name, classifier)
        self.pool = GeM()
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.heads_of(x), dim=1)

    def heads_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        feature_map = self.trunk(x)
        return [
            self.tail(feature_map)
            if head == "logits"
            else nn.functional.normalize(self.pool(feature_map), p=2.0, dim=1)
            for head in self.heads
        ]


def _network(
    name: str, classifier: nn.Module, heads: tuple[str, ...]
) -> tuple[nn.Module, tuple[str, ...]]:
    """The network computing `heads`, and what each head computes (for its fingerprint: vectors
    of different heads, or of a GeM head with another input, are never mixed)."""
    if len(heads) > 1:
        shared = SharedPassHeads(name, classifier, heads)
        return shared, tuple(SharedPassHeads.IDENTITY[head] for head in heads)
    if heads[0] == "logits":
        return classifier, heads
    return GeMHead(convolutional_trunk(name, classifier)), (GeMHead.IDENTITY,)


def classifier_tail(name: str, model: nn.Module) -> nn.Module:
    """What a torchvision classifier computes after `convolutional_trunk`'s map: applied to that
    map it gives the classifier's output exactly (tests/test_embedder_heads.py)."""
    if name.startswith("squeezenet"):
        classifier: Any = model.classifier
        return nn.Sequential(list(classifier.children())[-1], nn.Flatten(1))
    if all(hasattr(model, a) for a in ("conv1", "layer4", "avgpool", "fc")):  # ResNet family
        resnet: Any = model
        return nn.Sequential(resnet.avgpool, nn.Flatten(1), resnet.fc)
    # Elsewhere the trunk ends in a ReLU the classifier does not have: not one pass.
    raise ModelLoadError(
        f"heads logits and gem from one pass are supported for SqueezeNet and ResNet models, "
        f"not {name!r}: serve one head (--head logits or --head gem)"
    )


def convolutional_trunk(name: str, model: nn.Module) -> nn.Module:
    """The part of a torchvision classifier that ends in its last convolutional feature map."""
    if name.startswith("squeezenet"):
        # SqueezeNet's classifier is itself a 1×1 convolution to 1000 channels (+ ReLU): its map
        # is the last one, so GeM over it keeps the 1000-d size of the logits.
        classifier: Any = model.classifier
        features: Any = model.features
        head = list(classifier.children())[:-1]  # drop the global average pool
        return nn.Sequential(features, *head)
    if all(hasattr(model, a) for a in ("conv1", "layer4", "avgpool", "fc")):  # ResNet family
        return nn.Sequential(*list(model.children())[:-2])
    if hasattr(model, "features") and hasattr(model, "classifier"):  # VGG, MobileNet, ...
        trunk: Any = model.features
        return nn.Sequential(trunk, nn.ReLU())
    raise ModelLoadError(
        f"head 'gem' is not supported for model {name!r}: its last convolutional map is not "
        "known; use --head logits"
    )


class EmbeddingModel:
    """A loaded model ready for batches of preprocessed images (N×3×224×224 float32)."""

    def __init__(self, spec: ModelSpec) -> None:
        heads = parse_heads(spec.head)
        if spec.runtime not in RUNTIMES:
            raise ModelLoadError(
                f"unknown runtime {spec.runtime!r}; use one of {', '.join(RUNTIMES)}"
            )
        if spec.threads > 0:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        # Several heads share the pass, and so its input: the tutorial's.
        input_of = heads[0] if len(heads) == 1 else "logits"
        self._prepare = preprocessing.for_head(input_of)
        self.device = resolve_device(spec.device)
        started = time.monotonic()
        classifier, source, description = load_classifier(spec)
        network, identities = _network(spec.name, classifier, heads)
        network.eval()
        # channels_last lets oneDNN pick its fast convolution kernels: ~2.5× on these CPUs.
        self.network = network.to(self.device).to(memory_format=torch.channels_last)
        self._onnx: Any = None
        self.runtime = self._choose_runtime(spec)
        described = self._describe_heads(classifier, heads, identities, input_of)
        first = described[0]
        self.info = ModelInfo(
            model=spec.name,
            weights_source=source,
            weights=description,
            head=first.name,
            dim=first.dim,
            preprocessing=first.preprocessing,
            device=str(self.device),
            runtime=self.runtime,
            fingerprint=first.fingerprint,
            heads=described,
        )
        logger.info(
            "loaded %s (%s weights: %s, head %s, %s) on %s with %s in %.1f s",
            spec.name,
            source,
            description,
            ",".join(heads),
            " + ".join(f"{head.dim}-d" for head in described),
            self.device,
            self.runtime,
            time.monotonic() - started,
        )

    def _describe_heads(
        self,
        classifier: nn.Module,
        heads: tuple[str, ...],
        identities: tuple[str, ...],
        input_of: str,
    ) -> tuple[HeadInfo, ...]:
        """Each head's place in the model's output, and its fingerprint."""
        probe = torch.zeros((1, 3, CROP, CROP), device=self.device)
        with torch.inference_mode():
            parts = (
                self.network.heads_of(probe)
                if isinstance(self.network, SharedPassHeads)
                else [self.network(probe)]
            )
        state = classifier.state_dict()
        described, start = [], 0
        for head, identity, part in zip(heads, identities, parts, strict=True):
            described.append(
                HeadInfo(
                    name=head,
                    kind=SHARED_PASS_GEM if identity == SHARED_PASS_GEM else head,
                    dim=int(part.shape[1]),
                    fingerprint=weights_fingerprint(self.spec.name, identity, state),
                    preprocessing=preprocessing.description(input_of),
                    start=start,
                )
            )
            start += int(part.shape[1])
        return tuple(described)

    def _choose_runtime(self, spec: ModelSpec) -> str:
        from embedder import onnx_runtime

        wanted = spec.runtime
        if wanted == "torch" or (wanted == "auto" and self.device.type != "cpu"):
            return "torch"
        if self.device.type != "cpu":
            raise ModelLoadError("runtime 'onnx' runs on the CPU only; use --device cpu")
        if not onnx_runtime.available():
            if wanted == "onnx":
                raise ModelLoadError(
                    "runtime 'onnx' needs onnxruntime, onnx and onnxscript: "
                    "pip install 'imgsearch[onnx]'"
                )
            logger.info("onnxruntime not installed: using the torch runtime")
            return "torch"
        threads = spec.threads or torch.get_num_threads()
        runner = onnx_runtime.OnnxRunner(copy.deepcopy(self.network), threads)
        probe = torch.rand(4, 3, CROP, CROP, generator=torch.Generator().manual_seed(0)).numpy()
        expected = self._torch_forward(probe)
        error = relative_error(runner(probe), expected)
        if error > RUNTIME_TOLERANCE:
            message = (
                f"ONNX Runtime {runner.version} output differs from torch's by {error:.2e} "
                f"(relative; the limit is {RUNTIME_TOLERANCE:.0e})"
            )
            if wanted == "onnx":
                raise ModelLoadError(message)
            logger.warning("%s: using the torch runtime", message)
            return "torch"
        self._onnx = runner
        # torch now only preprocesses, in the decode threads: intra-op threads there would
        # oversubscribe the cores ONNX Runtime computes on.
        torch.set_num_threads(1)
        logger.info("ONNX Runtime %s matches torch to %.1e on a probe batch", runner.version, error)
        return "onnx"

    @property
    def device_type(self) -> str:
        return str(self.device.type)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image → this model's input (the GeM head trims uniform borders first;
        the logits head keeps the tutorial's preprocessing exactly)."""
        return self._prepare(image)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Vectors (N×dim float32) for a batch of preprocessed images."""
        if self._onnx is not None:
            result: np.ndarray = self._onnx(batch)
            return result
        return self._torch_forward(batch)

    def _torch_forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            out = self.network(x)
            return np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32)

    def warm_up(self, batch_size: int) -> None:
        """Run the shapes we will serve once, so the first request does not pay for setup."""
        for n in sorted({1, batch_size}):
            self.forward(np.zeros((n, 3, CROP, CROP), np.float32))


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {requested!r}; use auto, cpu or cuda") from None


def imagenet_weights_file(name: str) -> tuple[Any, Path]:
    """torchvision's default weights enum for `name` and the cache file it loads from."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ModelLoadError(
            f"unknown model {name!r}; use a torchvision classification model name such as "
            f"{defaults.MODEL} or resnet50"
        ) from None
    filename = os.path.basename(urlparse(weights.url).path)
    return weights, Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_classifier(spec: ModelSpec) -> tuple[nn.Module, str, str]:
    """The torchvision model with its weights, the weights' source and a description."""
    if spec.weights == "imagenet":
        weights, path = imagenet_weights_file(spec.name)
        if not path.exists():
            logger.info("ImageNet weights not in the cache; downloading %s", weights.url)
        try:
            # torchvision loads from the TORCH_HOME cache, downloading only what is missing.
            model = torchvision.models.get_model(spec.name, weights=weights)
        except Exception as exc:  # no network, proxy, disk: all end the same way for the user
            raise ModelLoadError(
                f"ImageNet weights for {spec.name} are not cached and could not be downloaded "
                f"({type(exc).__name__}: {str(exc)[:200]}). Put the file {path.name} in the "
                f"folder {path.parent} (from {weights.url}; TORCH_HOME moves that folder), or "
                "pass --weights PATH to a saved state_dict, or --weights random for a model "
                "whose results mean nothing"
            ) from None
        return model, "imagenet", f"{type(weights).__name__}.{weights.name} ({path})"
    if spec.weights == "random":
        torch.manual_seed(spec.seed)
        model = _bare_model(spec.name)
        logger.warning(
            "RANDOM WEIGHTS (seed %d): vectors from this embedder carry no meaning; use them "
            "for tests and benchmarks only",
            spec.seed,
        )
        return model, "random", f"seed {spec.seed}"
    path = Path(spec.weights)
    if not path.is_file():
        raise ModelLoadError(
            f"weights {spec.weights!r} is neither 'imagenet', 'random' nor an existing file"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read checkpoint {path}: {str(exc)[:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    model = _bare_model(spec.name)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"checkpoint {path} does not fit model {spec.name}: {str(exc)[:300]}"
        ) from None
    return model, "checkpoint", str(path.resolve())


def _bare_model(name: str) -> nn.Module:
    try:
        model: nn.Module = torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise ModelLoadError(f"unknown model {name!r}") from None
    return model


def weights_fingerprint(name: str, head: str, state: dict[str, torch.Tensor]) -> str:
    """Identifies model + weights + head + preprocessing: equal only when vectors are comparable.
    Hashes the tensors themselves, so the same weights give the same fingerprint whichever
    file or cache they came from."""
    digest = hashlib.sha256()
    for part in (name, head, PREPROCESSING):
        digest.update(part.encode() + b"\0")
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()[:32]
