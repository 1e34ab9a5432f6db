"""ONNX Runtime for the embedding network: the same torchvision module, exported at start-up.

Nothing is downloaded or cached: the module (with whatever weights were loaded) is exported to an
in-memory ONNX graph with a dynamic batch axis, and an InferenceSession runs it. Before serving,
the caller compares its output with torch's on a probe batch (see EmbeddingModel), so a runtime
that would change the vectors is never used silently.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# The exporter narrates every optimisation pass at INFO; our own log line reports the result.
for _chatty in ("onnxscript", "onnx_ir", "torch.onnx"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

INPUT = "images"
OUTPUT = "embeddings"


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRunner:
    """network(batch) through onnxruntime on the CPU."""

    def __init__(self, network: nn.Module, threads: int) -> None:
        import onnxruntime

        probe = torch.zeros(1, 3, 224, 224)
        # torch.export-based exporter (the TorchScript one is deprecated); batch axis dynamic.
        program = torch.onnx.export(
            network.to("cpu").to(memory_format=torch.contiguous_format),
            (probe,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            dynamo=True,
            verbose=False,
        )
        assert program is not None
        graph = program.model_proto.SerializeToString()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's workers spin between runs by default, burning the cores that decoding needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(
            graph, options, providers=["CPUExecutionProvider"]
        )
        self.version = onnxruntime.__version__

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([OUTPUT], {INPUT: x})
        return np.asarray(out, dtype=np.float32)
