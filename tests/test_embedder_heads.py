"""An embedder of two heads: the tutorial's logits and a GeM vector for copy detection, both from
one forward pass, each with its own dimension, fingerprint and duplicate distance, returned by
name when a request asks for them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from embedder.calibration import calibrate, calibrate_heads
from embedder.config import EmbedderConfig
from embedder.export import export_model
from embedder.model import EmbeddingModel, GeM, convolutional_trunk, load_classifier
from embedder.preprocessing import preprocess
from embedder.server import Embedder
from embedder.spec import ModelSpec
from imgsearch import vectors
from imgsearch.errors import ModelLoadError
from imgsearch.photos import textured_photo
from imgsearch.v1 import embedder_pb2 as pb
from tests.embedder_helpers import (
    embedder_stub,
    reference_vectors,
    relative_error,
    save_random_weights,
    vector_of,
)


def photo_bytes(seed: int) -> bytes:
    out = io.BytesIO()
    textured_photo(seed, (500, 375)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_weights(tmp_path_factory.mktemp("weights") / "squeezenet.pth", seed=11)


@pytest.mark.parametrize(("name", "gem_dim"), [("squeezenet1_1", 1000), ("resnet18", 512)])
def test_both_heads_come_from_one_pass_and_the_logits_are_the_one_head_models(
    name: str, gem_dim: int
) -> None:
    both = EmbeddingModel(
        ModelSpec(name=name, weights="random", head="logits,gem", device="cpu", runtime="torch")
    )
    alone = EmbeddingModel(
        ModelSpec(name=name, weights="random", head="logits", device="cpu", runtime="torch")
    )
    logits, gem = both.info.heads
    assert (logits.name, logits.dim, gem.name, gem.dim) == ("logits", 1000, "gem", gem_dim)
    assert (both.info.head, both.info.dim, both.info.width) == ("logits", 1000, 1000 + gem_dim)
    batch = np.stack([preprocess(textured_photo(seed, (400, 300))) for seed in range(3)])
    out = both.forward(batch)
    assert out.shape == (3, 1000 + gem_dim)
    # The logits are the classifier's output itself, not an approximation of it.
    assert np.array_equal(logits.of(out), alone.forward(batch))
    # The GeM vector pools the same pass's last map: the tutorial's input, nothing standardised.
    classifier, _, _ = load_classifier(ModelSpec(name=name, weights="random"))
    with torch.inference_mode():
        pooled = GeM()(convolutional_trunk(name, classifier.eval())(torch.from_numpy(batch)))
    expected = torch.nn.functional.normalize(pooled, dim=1).numpy()
    assert relative_error(gem.of(out), expected) < 1e-5
    assert np.allclose(np.linalg.norm(gem.of(out), axis=1), 1.0, atol=1e-5)


def test_each_head_has_its_own_fingerprint_and_the_logits_keep_the_one_head_models() -> None:
    both = EmbeddingModel(ModelSpec(weights="random", head="logits,gem", device="cpu"))
    logits = EmbeddingModel(ModelSpec(weights="random", head="logits", device="cpu"))
    gem = EmbeddingModel(ModelSpec(weights="random", head="gem", device="cpu"))
    first, second = both.info.heads
    # A collection of logits keeps taking vectors from an embedder that adds the GeM head...
    assert both.info.fingerprint == first.fingerprint == logits.info.fingerprint
    # ...but the shared pass's GeM vectors (no trimming, no standardising) are not the
    # standalone GeM head's, and are never mixed with them.
    assert second.fingerprint not in (gem.info.fingerprint, first.fingerprint)
    assert second.kind == "gem/shared-pass" and gem.info.heads[0].kind == "gem"
    # The runtime does not change the vectors (ONNX Runtime when installed, as for one head).
    eager = EmbeddingModel(
        ModelSpec(weights="random", head="logits,gem", device="cpu", runtime="torch")
    )
    batch = np.random.default_rng(2).random((2, 3, 224, 224), np.float32)
    assert relative_error(both.forward(batch), eager.forward(batch)) < 1e-5


@pytest.mark.parametrize(
    ("name", "head", "words"),
    [
        ("squeezenet1_1", "logits,logits", "names a head twice"),
        ("squeezenet1_1", "logits,max", "unknown head 'max'"),
        ("mobilenet_v3_small", "logits,gem", "SqueezeNet and ResNet models"),
    ],
)
def test_heads_that_cannot_be_served_together_fail_at_start(
    name: str, head: str, words: str
) -> None:
    with pytest.raises(ModelLoadError, match=words):
        EmbeddingModel(ModelSpec(name=name, weights="random", head=head, device="cpu"))


def test_each_head_gets_the_duplicate_distance_of_its_own_vectors() -> None:
    both = EmbeddingModel(ModelSpec(weights="random", head="logits,gem", device="cpu"))
    alone = EmbeddingModel(ModelSpec(weights="random", head="logits", device="cpu"))
    per_head = calibrate_heads(both.forward, both.preprocess, 4, both.info.heads)
    assert set(per_head) == {"logits", "gem"}
    assert per_head["logits"].l2 == pytest.approx(calibrate(alone.forward, preprocess, 4).l2)
    # GeM vectors are unit length: their scale is not the logits'.
    assert 0 < per_head["gem"].l2 < 2 and per_head["gem"].l2 != per_head["logits"].l2


@pytest.fixture(scope="module", params=["torch", "onnx-file"])
def embedder(weights: Path, request: pytest.FixtureRequest) -> Iterator[Embedder]:
    """An embedder of both heads on saved weights: torch, and ONNX Runtime alone on a file
    written by the exporter."""
    if request.param == "onnx-file":
        model_file = weights.with_suffix(".onnx")
        export_model(ModelSpec(weights=str(weights), head="logits,gem"), model_file)
        config = EmbedderConfig(address="127.0.0.1:0", model_file=str(model_file))
    else:
        config = EmbedderConfig(
            address="127.0.0.1:0", weights=str(weights), head="logits,gem", device="cpu"
        )
    with Embedder(config) as server:
        yield server


@pytest.fixture()
def stub(embedder: Embedder) -> Iterator[object]:
    channel, stub = embedder_stub(embedder.port)
    with channel:
        yield stub


def test_model_info_lists_both_heads_and_describes_the_first_as_before(stub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert [(h.name, h.head, h.dim) for h in info.heads] == [
        ("logits", pb.HEAD_LOGITS, 1000),
        ("gem", pb.HEAD_GEM_SHARED_PASS, 1000),
    ]
    first, second = info.heads
    assert (info.head, info.dim, info.fingerprint) == (pb.HEAD_LOGITS, 1000, first.fingerprint)
    assert info.duplicate_distance == first.duplicate_distance > 0
    assert 0 < second.duplicate_distance < 2 and "generated probes" in second.duplicate_calibration
    assert second.fingerprint != first.fingerprint
    assert first.preprocessing == second.preprocessing == info.preprocessing


def test_a_request_gets_the_vectors_of_the_heads_it_names(stub, weights: Path) -> None:
    pictures = [photo_bytes(seed) for seed in range(3)]
    images = [pb.Image(key=str(i), data=data) for i, data in enumerate(pictures)]
    plain = stub.Embed(pb.EmbedRequest(images=images), timeout=60).results
    named = stub.Embed(pb.EmbedRequest(images=images, heads=["gem", "logits"]), timeout=60).results
    reference = reference_vectors(weights, pictures)
    for i, (one, two) in enumerate(zip(plain, named, strict=True)):
        # Without a name, a result is what a one-head embedder gives: the tutorial's logits.
        assert not one.vectors and relative_error(vector_of(one), reference[i]) < 1e-4
        assert set(two.vectors) == {"logits", "gem"}
        assert np.array_equal(vectors.from_proto(two.vectors["logits"]), vector_of(two))
        gem = vectors.from_proto(two.vectors["gem"])
        assert gem.shape == (1000,) and abs(np.linalg.norm(gem) - 1) < 1e-5
    only_gem = stub.Embed(pb.EmbedRequest(images=images[:1], heads=["gem"]), timeout=60)
    assert set(only_gem.results[0].vectors) == {"gem"}


def test_a_stream_gets_named_vectors_and_a_bad_image_gets_only_its_error(stub) -> None:
    messages = [
        pb.EmbedStreamRequest(
            images=[pb.Image(key="good", data=photo_bytes(5)), pb.Image(key="bad", data=b"no")],
            heads=["gem"],
        )
    ]
    (response,) = list(stub.EmbedStream(iter(messages), timeout=60))
    good, bad = response.results
    assert set(good.vectors) == {"gem"} and good.WhichOneof("outcome") == "vector"
    assert bad.WhichOneof("outcome") == "error" and not bad.vectors


def test_an_unknown_head_name_fails_the_call_and_names_the_heads_served(stub) -> None:
    request = pb.EmbedRequest(images=[pb.Image(key="a", data=photo_bytes(1))], heads=["sift"])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no head 'sift'" in caught.value.details()
    assert "logits, gem" in caught.value.details()
