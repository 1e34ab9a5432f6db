"""An ONNX Runtime session for the embedding network, configured once for both ways the
embedder uses ONNX: a graph exported from torch at start (embedder.onnx_runtime) and a graph
read from a file without torch (embedder.onnx_file). No torch here."""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT = "images"
OUTPUT = "embeddings"
# ONNX Runtime must reproduce torch's vectors this closely on probe inputs, whether the graph was
# exported at start or read from a file (the fidelity bar is 1e-3; exported graphs differ by ~1e-6).
RUNTIME_TOLERANCE = 1e-4


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """‖got − expected‖ / ‖expected‖: how far a runtime's vectors are from torch's."""
    scale = max(float(np.linalg.norm(expected)), 1e-12)
    return float(np.linalg.norm(got - expected)) / scale


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
