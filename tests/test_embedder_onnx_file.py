"""The torch-free embedder: `imgsearch-embedder-export` writes the network and what its vectors
depend on to an ONNX file; `imgsearch-embedder --model-file` serves it with ONNX Runtime alone,
with the torch embedder's vectors and fingerprint, and refuses a file it cannot vouch for."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from embedder import onnx_file
from embedder.export import export_model
from embedder.model import EmbeddingModel
from embedder.onnx_file import OnnxFileModel
from embedder.spec import ModelSpec
from imgsearch.errors import ModelLoadError
from imgsearch.v1 import embedder_pb2 as pb
from tests import images
from tests.conftest import ROOT
from tests.embedder_helpers import embed, embedder_stub, relative_error, vector_of
from tests.process_helpers import run_module

SPEC = ModelSpec(weights="random", seed=3, head="gem")

# Run as the embedder's main with torch made unimportable: what the slim image has.
WITHOUT_TORCH = (
    "import sys; sys.modules.update(torch=None, torchvision=None); "
    "from embedder.__main__ import main; sys.exit(main())"
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "gem.onnx"
    export_model(SPEC, out)
    return out


@pytest.fixture(scope="module")
def torch_model() -> EmbeddingModel:
    return EmbeddingModel(ModelSpec(weights="random", seed=3, head="gem", runtime="torch"))


@pytest.fixture(scope="module")
def without_torch(model_file: Path) -> Iterator[int]:
    """`imgsearch-embedder --model-file` in a process where `import torch` fails; its port."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH,
            "--address",
            "127.0.0.1:0",
            "--model-file",
            str(model_file),
            "--duplicate-probes",
            "4",
        ],  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = next(
            (int(line.rsplit(" ", 1)[1]) for line in process.stdout if "listening on" in line), 0
        )
        assert port, f"the embedder did not start: exit {process.wait(timeout=30)}"
        # Its log goes on; read it so a full pipe never blocks the server.
        reader = threading.Thread(target=process.stdout.read, daemon=True)
        reader.start()
        yield port
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


def test_the_file_describes_the_model_and_carries_its_fingerprint(model_file, torch_model) -> None:
    served = OnnxFileModel(str(model_file))
    assert served.info.fingerprint == torch_model.info.fingerprint
    assert (served.info.model, served.info.head, served.info.dim) == ("squeezenet1_1", "gem", 1000)
    assert served.info.preprocessing == torch_model.info.preprocessing
    assert (served.info.weights_source, served.info.runtime) == ("random", "onnx-file")
    assert not model_file.with_name(model_file.name + ".partial").exists()


def test_an_embedder_without_torch_serves_the_torch_embedders_vectors(
    without_torch: int, torch_model: EmbeddingModel
) -> None:
    data = [images.jpeg(i, size) for i, size in enumerate([(640, 480), (300, 500), (90, 60)])]
    pictures = [Image.open(io.BytesIO(d)).convert("RGB") for d in data]
    expected = torch_model.forward(np.stack([torch_model.preprocess(p) for p in pictures]))
    channel, stub = embedder_stub(without_torch)
    with channel:
        results = embed(stub, data)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    for result, want in zip(results, expected, strict=True):
        assert relative_error(vector_of(result), want) < 1e-4
    assert info.fingerprint == torch_model.info.fingerprint and info.runtime == "onnx-file"
    assert info.head == pb.HEAD_GEM and info.weights_source == pb.WEIGHTS_SOURCE_RANDOM
    assert info.duplicate_distance > 0  # calibrated at start, without torch too


def _rewritten(model_file: Path, out: Path, **metadata: str) -> Path:
    proto = onnx.load(str(model_file))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({onnx_file.KEY_PREFIX + k: v for k, v in metadata.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        if value:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def test_a_file_whose_graph_no_longer_gives_the_recorded_vectors_is_refused(
    model_file: Path, tmp_path: Path
) -> None:
    proto = onnx.load(str(model_file))
    weights = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    values = np.frombuffer(weights.raw_data, np.float32).copy()
    values[: len(values) // 2] *= 1.5  # someone's "fine-tuned" copy under the old fingerprint
    weights.raw_data = values.tobytes()
    onnx.save(proto, str(tmp_path / "altered.onnx"))
    with pytest.raises(ModelLoadError, match="differ from those recorded at export"):
        OnnxFileModel(str(tmp_path / "altered.onnx"))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"fingerprint": ""}, "was not written by imgsearch-embedder-export"),
        ({"format": "2"}, "format 2"),
        ({"preprocessing": "Resize(299)"}, "exported for the preprocessing"),
        ({"head": "cls"}, "head 'cls'"),
    ],
)
def test_a_file_that_does_not_say_what_this_embedder_computes_is_refused(
    model_file: Path, tmp_path: Path, metadata: dict[str, str], message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        OnnxFileModel(str(_rewritten(model_file, tmp_path / "changed.onnx", **metadata)))


def test_missing_and_malformed_files_stop_the_embedder_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.onnx").write_text("not a graph")
    for path, message in ((tmp_path / "absent.onnx", "cannot read the model file"),
                          (tmp_path / "notes.onnx", "is not an ONNX graph")):  # fmt: skip
        done = run_module("embedder", "--model-file", str(path), "--address", "127.0.0.1:0")
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_export_refuses_weights_it_cannot_load_and_writes_nothing(tmp_path: Path) -> None:
    done = run_module(
        "embedder.export", str(tmp_path / "m.onnx"), "--weights", str(tmp_path / "none.pth")
    )
    assert done.returncode == 2 and "neither 'imagenet', 'random' nor an existing file" in (
        done.stderr
    )
    assert list(tmp_path.iterdir()) == []
