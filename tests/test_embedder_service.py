"""The embedder over gRPC: fidelity to the tutorial's pipeline, per-image errors for every kind
of bad input, limits, streaming order, model info, health and reflection."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image, ImageOps

from embedder import probes
from embedder.config import EmbedderConfig
from embedder.export import export_model
from embedder.server import Embedder
from embedder.spec import ModelSpec
from imgsearch.photos import textured_photo
from imgsearch.v1 import embedder_pb2 as pb
from tests import images
from tests.embedder_helpers import (
    embed,
    embedder_stub,
    reference_vectors,
    relative_error,
    save_random_weights,
    vector_of,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_weights(tmp_path_factory.mktemp("weights") / "squeezenet.pth", seed=7)


@pytest.fixture(scope="module", params=["torch", "onnx", "onnx-file"])
def embedder(weights: Path, request: pytest.FixtureRequest) -> Iterator[Embedder]:
    """One embedder per runtime offered, on the same saved weights: torch, ONNX Runtime on a
    graph exported at start, and ONNX Runtime alone on a file written by the exporter."""
    if request.param == "onnx-file":
        model_file = weights.with_suffix(".onnx")
        if not model_file.exists():
            export_model(ModelSpec(weights=str(weights)), model_file)
        config = EmbedderConfig(address="127.0.0.1:0", model_file=str(model_file))
    else:
        config = EmbedderConfig(
            address="127.0.0.1:0", weights=str(weights), device="cpu", runtime=request.param
        )
    with Embedder(config) as server:
        yield server


@pytest.fixture(scope="module")
def tiny(weights: Path) -> Iterator[Embedder]:
    """An embedder with tiny limits, and batches that wait long enough to be caught waiting."""
    config = EmbedderConfig(
        address="127.0.0.1:0",
        weights=str(weights),
        device="cpu",
        max_message_bytes=1 << 20,
        max_images_per_request=4,
        max_queue_images=4,
        max_delay_ms=400,
    )
    with Embedder(config) as server:
        yield server


@pytest.fixture()
def stub(embedder: Embedder) -> Iterator[object]:
    channel, stub = embedder_stub(embedder.port)
    with channel:
        yield stub


def _fidelity_set() -> list[bytes]:
    sizes = [(500, 375), (375, 500), (64, 48), (1024, 768), (224, 224), (300, 1000), (257, 256)]
    out = [images.jpeg(i, size) for i, size in enumerate(sizes)]
    out += [images.encode(images.photo(10 + i, (320, 240)), "PNG") for i in range(3)]
    out += [images.encode(images.photo(20, (200, 300)).convert("L"), "PNG")]
    out += [images.encode(images.photo(21, (640, 480)).convert("P"), "PNG")]
    out += [images.encode(images.photo(22, (256, 256)), "WEBP", quality=90)]
    out += [images.encode(images.photo(23, (333, 222)), "BMP")]
    out += [images.encode(images.photo(24, (180, 120)).convert("P"), "GIF")]
    out += [images.encode(images.photo(25, (400, 300)).convert("CMYK"), "JPEG")]
    out += [images.jpeg(30 + i, (480 + 16 * i, 360)) for i in range(8)]
    return out


def test_vectors_match_the_tutorials_pipeline_for_every_size_mode_and_format(
    stub, weights: Path
) -> None:
    data = _fidelity_set()
    assert len(data) >= 20
    reference = reference_vectors(weights, data)
    results = embed(stub, data)
    errors = [relative_error(vector_of(r), ref) for r, ref in zip(results, reference, strict=True)]
    assert max(errors) <= 1e-3, errors


def test_every_bad_input_fails_alone_and_the_server_stays_serving(stub, embedder) -> None:
    good = images.jpeg(1)
    bad = {
        "zero-bytes": (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        "random-bytes": (bytes(range(256)) * 8, grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        "truncated-jpeg": (good[: len(good) // 2], grpc.StatusCode.INVALID_ARGUMENT, "decoded"),
        "png-bomb": (images.png_bomb(), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_image_pixels"),
        "30000x30000": (
            images.png_header_only(30000, 30000),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "900000000 pixels",
        ),
        "tiff": (
            images.encode(images.photo(2, (64, 64)), "TIFF"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TIFF is not accepted",
        ),
    }
    request = pb.EmbedRequest(
        images=[pb.Image(key="good-before", data=good)]
        + [pb.Image(key=key, data=data) for key, (data, _, _) in bad.items()]
        + [pb.Image(key="good-after", data=good)]
    )
    results = {r.key: r for r in stub.Embed(request, timeout=60).results}
    assert np.array_equal(vector_of(results["good-before"]), vector_of(results["good-after"]))
    for key, (_, code, words) in bad.items():
        assert results[key].WhichOneof("outcome") == "error", key
        assert results[key].error.code == code.value[0], (key, results[key].error)
        assert words in results[key].error.message, (key, results[key].error.message)
    channel, _ = embedder_stub(embedder.port)
    with channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="imgsearch.v1.EmbedderService")
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_odd_modes_are_embedded_as_the_picture_a_person_sees(stub) -> None:
    upright = images.photo(40, (320, 200))
    exif_jpeg = images.with_exif_orientation(upright)
    stored = Image.open(io.BytesIO(exif_jpeg))
    stored_pixels = images.encode(stored.convert("RGB"), "PNG")  # EXIF ignored
    upright_pixels = images.encode(ImageOps.exif_transpose(stored), "PNG")
    rgba = upright.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: a white picture
    white = images.encode(Image.new("RGB", (320, 200), (255, 255, 255)), "PNG")
    levels = (np.asarray(upright.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    sixteen = images.encode(Image.fromarray(levels), "PNG")
    eight = images.encode(upright.convert("L"), "PNG")
    frames = [images.photo(41, (96, 96)), images.photo(42, (96, 96))]
    cases = [
        exif_jpeg, upright_pixels, stored_pixels, images.encode(rgba, "PNG"), white,
        sixteen, eight, images.animated_gif(frames), images.encode(frames[0], "GIF"),
        images.encode(upright.convert("CMYK"), "JPEG"),
    ]  # fmt: skip
    v = [vector_of(r) for r in embed(stub, cases)]
    assert relative_error(v[0], v[1]) < 1e-5  # EXIF-rotated JPEG = its upright pixels
    assert relative_error(v[0], v[2]) > 100 * max(relative_error(v[0], v[1]), 1e-7)
    assert relative_error(v[3], v[4]) < 1e-5  # transparent = white
    assert relative_error(v[5], v[6]) < 1e-5  # 16-bit scaled to the same 8-bit picture
    assert relative_error(v[7], v[8]) < 1e-5  # animated: its first frame
    assert np.isfinite(v[9]).all()  # CMYK


def test_embed_stream_answers_every_message_in_order(stub) -> None:
    data = [images.jpeg(100 + i, (200 + 7 * i, 150)) for i in range(30)]
    alone = [vector_of(r) for r in embed(stub, data)]
    requests = [
        pb.EmbedStreamRequest(images=[pb.Image(key=f"{i}-{j}", data=data[(i + j) % 30])])
        for i in range(30)
        for j in range(1 if i % 3 else 2)
    ]
    responses = list(stub.EmbedStream(iter(requests), timeout=120))
    assert len(responses) == len(requests)
    for request, response in zip(requests, responses, strict=True):
        assert [r.key for r in response.results] == [i.key for i in request.images]
        for result in response.results:
            i, j = map(int, result.key.split("-"))
            assert relative_error(vector_of(result), alone[(i + j) % 30]) < 1e-4


def test_model_info_describes_the_serving_model(stub, embedder, weights: Path) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert (info.model, info.dim, info.head) == ("squeezenet1_1", 1000, pb.HEAD_LOGITS)
    assert info.weights_source == pb.WEIGHTS_SOURCE_CHECKPOINT
    assert info.weights == str(weights.resolve())
    runtime = "onnx-file" if embedder.config.model_file else embedder.config.runtime
    assert info.device == "cpu" and info.runtime == runtime
    assert "Resize(256" in info.preprocessing and "CenterCrop(224)" in info.preprocessing
    assert info.fingerprint.startswith("sha256:")
    assert (info.max_batch_size, info.max_images_per_request) == (8, 256)
    assert (info.max_image_bytes, info.max_image_pixels) == (16 << 20, 50_000_000)
    assert info.duplicate_distance > 0 and 0 < info.duplicate_cosine_distance < 2
    assert "generated probes" in info.duplicate_calibration


def test_duplicate_distance_keeps_a_reencoded_copy_and_drops_another_picture(stub) -> None:
    """The distance calibrated at start-up, on probes the test does not use, separates a light
    JPEG re-encoding of a photo-like picture from a different picture."""
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    original = textured_photo(1001, (640, 480), scene=901)
    other = textured_photo(1002, (640, 480), scene=902)
    pictures = [original, probes.jpeg(85)(original), other]
    as_bytes = [images.encode(p, "PNG") for p in pictures]
    first, copy, different = (vector_of(r) for r in embed(stub, as_bytes))
    assert np.linalg.norm(copy - first) < info.duplicate_distance
    assert np.linalg.norm(different - first) > info.duplicate_distance


def test_reflection_lists_the_services(embedder) -> None:
    channel, _ = embedder_stub(embedder.port)
    with channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in response.list_services_response.service}
    assert {"imgsearch.v1.EmbedderService", "grpc.health.v1.Health"} <= names


def test_limits_answer_resource_exhausted_naming_the_limit(tiny) -> None:
    channel, stub = embedder_stub(tiny.port)
    with channel:
        with pytest.raises(grpc.RpcError) as raised:
            stub.Embed(pb.EmbedRequest(images=[pb.Image(data=b"x" * (2 << 20))]), timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        five = pb.EmbedRequest(images=[pb.Image(data=images.jpeg(i)) for i in range(5)])
        with pytest.raises(grpc.RpcError) as raised:
            stub.Embed(five, timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_images_per_request" in raised.value.details() and "4" in raised.value.details()


def test_overload_is_refused_at_once_and_the_admitted_work_completes(tiny) -> None:
    channel, stub = embedder_stub(tiny.port)
    request = pb.EmbedRequest(images=[pb.Image(data=images.jpeg(i, (96, 96))) for i in range(3)])
    outcomes: list[object] = []
    with channel:
        calls = [stub.Embed.future(request, timeout=30) for _ in range(8)]
        for call in calls:
            try:
                outcomes.append(len(call.result().results))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_queue_images=4" in exc.details()
                outcomes.append("busy")
    assert 3 in outcomes and "busy" in outcomes
    assert tiny.batcher is not None and tiny.batcher.in_flight == 0


def test_cancelled_and_expired_requests_are_not_computed(tiny) -> None:
    batcher = tiny.batcher
    assert batcher is not None
    channel, stub = embedder_stub(tiny.port)
    request = pb.EmbedRequest(images=[pb.Image(data=images.jpeg(7, (96, 96)))])
    with channel:
        computed, cancelled = batcher.stats.images, batcher.stats.dropped_cancelled
        call = stub.Embed.future(request, timeout=30)
        _wait_until(lambda: batcher.queue_depth == 1)  # decoded, waiting for its batch
        call.cancel()
        _wait_until(lambda: batcher.stats.dropped_cancelled == cancelled + 1)
        # gRPC cancels a handler whose deadline passed: dropped as cancelled or as expired,
        # whichever the batcher sees first; either way never computed.
        dropped = batcher.stats.dropped_cancelled + batcher.stats.dropped_expired
        with pytest.raises(grpc.RpcError) as raised:
            stub.Embed(request, timeout=0.2)  # the batch waits 400 ms
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_until(
            lambda: batcher.stats.dropped_cancelled + batcher.stats.dropped_expired == dropped + 1
        )
        assert batcher.stats.images == computed


def _wait_until(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
