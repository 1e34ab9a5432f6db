"""`imgsearch-embedder-export OUT.onnx`: write the embedding network to an ONNX file that an
embedder without torch serves (`imgsearch-embedder --model-file OUT.onnx`; embedder.onnx_file).

The file carries, in the graph's metadata, the model, weights, head and preprocessing, the
weights' fingerprint (vectors from it and from the torch embedder with the same weights are
comparable, and collections accept both), and torch's vectors for the probe pictures, which
the loading embedder must reproduce. The file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from embedder import onnx_file, preprocessing
from embedder.spec import ModelInfo, ModelSpec
from imgsearch import defaults
from imgsearch._extras import require_extra
from imgsearch.errors import StartupError


def export_model(spec: ModelSpec, out: Path) -> ModelInfo:
    """Load the model as the torch embedder would, write it to `out`, and check that the file
    serves the same vectors; what it serves."""
    require_extra("onnx", "torch", "torchvision", "onnx", "onnxruntime", "onnxscript")
    import onnx

    from embedder.model import EmbeddingModel
    from embedder.onnx_runtime import export_graph

    model = EmbeddingModel(replace(spec, device="cpu", runtime="torch"))
    info = model.info
    proto = onnx.load_from_string(export_graph(copy.deepcopy(model.network)))
    probes = preprocessing.stack([model.preprocess(p) for p in onnx_file.probe_pictures()])
    described = {
        "format": onnx_file.FORMAT,
        "model": info.model,
        "weights_source": info.weights_source,
        "weights": info.weights,
        "head": info.head,
        "dim": str(info.dim),
        "preprocessing": info.preprocessing,
        "fingerprint": info.fingerprint,
        "probe_vectors": onnx_file.encode_vectors(model.forward(probes)),
    }
    if len(info.heads) > 1:
        described[onnx_file.HEADS_KEY] = onnx_file.describe_heads(info.heads)
        described["head"] = ",".join(head.name for head in info.heads)
    for key, value in described.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = onnx_file.KEY_PREFIX + key, value
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(proto.SerializeToString())
    try:
        served = onnx_file.OnnxFileModel(str(partial)).info
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return served


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imgsearch-embedder-export",
        description="Write the embedding network to an ONNX file for an embedder without torch "
        "(imgsearch-embedder --model-file FILE). Needs the torch embedder: "
        "pip install 'imgsearch[onnx]'.",
    )
    parser.add_argument("out", type=Path, help="the .onnx file to write")
    parser.add_argument("--model", default=defaults.MODEL, help="torchvision model name")
    parser.add_argument(
        "--weights",
        default=defaults.WEIGHTS,
        help="imagenet (from the TORCH_HOME cache), a state_dict file path, or random "
        "(tests and benchmarks only: results are meaningless)",
    )
    parser.add_argument(
        "--head",
        default=defaults.HEAD,
        help="logits, gem, or logits,gem (both vectors from one forward pass)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    args = parser.parse_args(argv)
    spec = ModelSpec(name=args.model, weights=args.weights, head=args.head, seed=args.seed)
    try:
        info = export_model(spec, args.out)
    except (StartupError, ImportError) as exc:
        print(f"imgsearch-embedder-export: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {info.model} ({info.weights_source} weights: {info.weights}), "
        + ", ".join(
            f"head {head.name} {head.dim}-d (fingerprint {head.fingerprint})" for head in info.heads
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
