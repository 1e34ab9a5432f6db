"""Loading the model: ImageNet weights from the TORCH_HOME cache, checkpoints, explicit random
weights, fingerprints, heads and other backbones. Never a silent fallback."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder import probes
from embedder.model import (
    EmbeddingModel,
    ModelSpec,
    imagenet_weights_file,
    load_classifier,
    weights_fingerprint,
)
from embedder.preprocessing import preprocess
from imgsearch.errors import ModelLoadError
from imgsearch.photos import textured_photo
from tests.embedder_helpers import save_random_weights
from tests.process_helpers import DEAD_PROXY


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and no way out to the internet (a dead proxy), even where there is
    a network: what the cache lacks cannot be downloaded."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, DEAD_PROXY)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # urllib builds its default opener, proxies included, on first use and keeps it: one built
    # under the dead proxy must not outlive this test (later tests' urlopen would use it).
    monkeypatch.setattr(urllib.request, "_opener", None)
    return home


def test_imagenet_weights_load_from_the_torch_home_cache_without_a_network(torch_home) -> None:
    _, expected = imagenet_weights_file("squeezenet1_1")
    assert expected == torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    save_random_weights(expected, seed=11)
    model = EmbeddingModel(ModelSpec(weights="imagenet", device="cpu"))
    assert model.info.weights_source == "imagenet"
    assert "SqueezeNet1_1_Weights.IMAGENET1K_V1" in model.info.weights
    assert model.info.dim == 1000
    # The same tensors from a checkpoint path are the same model: same fingerprint.
    from_path = EmbeddingModel(ModelSpec(weights=str(expected), device="cpu"))
    assert from_path.info.weights_source == "checkpoint"
    assert from_path.info.fingerprint == model.info.fingerprint


def test_missing_imagenet_weights_fail_at_start_naming_the_file_and_folder(torch_home) -> None:
    with pytest.raises(ModelLoadError) as raised:
        EmbeddingModel(ModelSpec(weights="imagenet", device="cpu"))
    message = str(raised.value)
    assert "squeezenet1_1-b8a52dc0.pth" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "--weights random" in message  # the way out is named, never taken silently


def test_fingerprints_differ_between_weight_files_and_heads(tmp_path: Path) -> None:
    a = save_random_weights(tmp_path / "a.pth", seed=1)
    b = save_random_weights(tmp_path / "b.pth", seed=2)
    fingerprint_a = EmbeddingModel(ModelSpec(weights=str(a), device="cpu")).info.fingerprint
    fingerprint_b = EmbeddingModel(ModelSpec(weights=str(b), device="cpu")).info.fingerprint
    gem_a = EmbeddingModel(ModelSpec(weights=str(a), head="gem", device="cpu")).info.fingerprint
    assert len({fingerprint_a, fingerprint_b, gem_a}) == 3


def test_random_weights_are_explicit_reproducible_and_loud(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        first = EmbeddingModel(ModelSpec(weights="random", seed=3, device="cpu"))
    assert "RANDOM WEIGHTS" in caplog.text
    assert (first.info.weights_source, first.info.weights) == ("random", "seed 3")
    again = EmbeddingModel(ModelSpec(weights="random", seed=3, device="cpu"))
    other = EmbeddingModel(ModelSpec(weights="random", seed=4, device="cpu"))
    assert first.info.fingerprint == again.info.fingerprint != other.info.fingerprint


@pytest.mark.parametrize(
    ("weights", "words"),
    [
        ("/no/such/file.pth", "neither 'imagenet', 'random' nor an existing file"),
        ("resnet18", "does not fit model squeezenet1_1"),
    ],
)
def test_unusable_checkpoints_fail_at_start(tmp_path: Path, weights: str, words: str) -> None:
    if weights == "resnet18":
        weights = str(save_random_weights(tmp_path / "resnet18.pth", seed=0, name="resnet18"))
    with pytest.raises(ModelLoadError, match=words):
        EmbeddingModel(ModelSpec(weights=weights, device="cpu"))


def test_unknown_models_heads_and_devices_fail_at_start() -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'nosuchnet'"):
        EmbeddingModel(ModelSpec(name="nosuchnet", weights="random"))
    with pytest.raises(ModelLoadError, match="unknown head 'max'"):
        EmbeddingModel(ModelSpec(weights="random", head="max"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            EmbeddingModel(ModelSpec(weights="random", device="cuda"))


@pytest.mark.parametrize(
    ("name", "head", "dim"),
    [("squeezenet1_1", "gem", 1000), ("resnet18", "logits", 1000), ("resnet18", "gem", 512)],
)
def test_heads_and_backbones_have_their_natural_dimension(name: str, head: str, dim: int) -> None:
    model = EmbeddingModel(ModelSpec(name=name, weights="random", head=head, device="cpu"))
    assert model.info.dim == dim
    out = model.forward(np.random.default_rng(0).random((2, 3, 224, 224), np.float32))
    assert out.shape == (2, dim) and out.dtype == np.float32
    if head == "gem":
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("head", ["logits", "gem"])
def test_the_default_runtime_is_onnx_on_cpu_when_installed_and_it_matches_torch(head) -> None:
    from embedder import onnx_runtime

    auto = EmbeddingModel(ModelSpec(weights="random", device="cpu", head=head))
    eager = EmbeddingModel(ModelSpec(weights="random", device="cpu", runtime="torch", head=head))
    assert auto.info.runtime == ("onnx" if onnx_runtime.available() else "torch")
    assert auto.info.fingerprint == eager.info.fingerprint  # the runtime does not change vectors
    batch = np.random.default_rng(1).random((3, 3, 224, 224), np.float32)
    a, b = auto.forward(batch), eager.forward(batch)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5


def test_the_gem_head_is_blind_to_brightness_and_contrast_and_the_logits_are_not() -> None:
    """Its input is standardised per image and channel, so a darker or flatter copy of a
    picture gets (nearly) the picture's own vector."""
    original = textured_photo(3, (500, 375))
    darker, flatter = probes.brightness(0.85)(original), probes.contrast(0.8)(original)
    other = textured_photo(4, (500, 375))
    batch = np.stack([preprocess(p) for p in (original, darker, flatter, other)])
    for head, blind in (("gem", True), ("logits", False)):
        vectors = EmbeddingModel(ModelSpec(weights="random", head=head, device="cpu")).forward(
            batch
        )
        to_other = np.linalg.norm(vectors[3] - vectors[0])
        for copy in (1, 2):
            ratio = np.linalg.norm(vectors[copy] - vectors[0]) / to_other
            assert (ratio < 0.05) == blind, (head, copy, ratio)


def test_a_gem_collection_of_the_unstandardised_head_is_not_comparable() -> None:
    """The fingerprint names what the head computes, not only its name."""
    spec = ModelSpec(weights="random", head="gem", device="cpu", runtime="torch")
    classifier, _, _ = load_classifier(spec)
    earlier = weights_fingerprint(spec.name, "gem", classifier.state_dict())
    assert EmbeddingModel(spec).info.fingerprint != earlier
