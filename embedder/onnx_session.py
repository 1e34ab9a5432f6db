"""An ONNX Runtime session for the embedding network, configured once for both ways the
embedder uses ONNX: a graph exported from torch at start (embedder.onnx_runtime) and a graph
read from a file without torch (embedder.onnx_file). No torch here."""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT = "images"
OUTPUT = "embeddings"


def available() -> bool:
    """Whether ONNX Runtime can be imported (the file model needs nothing more)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxSession:
    """graph(batch) through onnxruntime on the CPU."""

    def __init__(self, graph: bytes, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's workers spin between runs by default, burning the cores that decoding needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: Any = onnxruntime.InferenceSession(
            graph, options, providers=["CPUExecutionProvider"]
        )
        self.version: str = onnxruntime.__version__

    def metadata(self) -> dict[str, str]:
        """The graph's metadata_props (what the exporter wrote beside the weights)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (out,) = self.session.run([OUTPUT], {INPUT: x})
        return np.asarray(out, dtype=np.float32)
