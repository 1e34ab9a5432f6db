"""ONNX Runtime for the embedding network: the same torchvision module, exported to ONNX.

At start-up (`--runtime onnx|auto`) the module, with whatever weights were loaded, is exported to
an in-memory graph with a dynamic batch axis and run by an `OnnxSession`. Before serving, the
caller compares its output with torch's on a probe batch (see EmbeddingModel), so a runtime that
would change the vectors is never used silently. `imgsearch-embedder-export` writes the same
graph to a file that an embedder without torch serves (embedder.onnx_file).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from embedder.onnx_session import INPUT, OUTPUT, OnnxSession

logger = logging.getLogger(__name__)

# The exporter narrates every optimisation pass at INFO; our own log line reports the result.
for _chatty in ("onnxscript", "onnx_ir", "torch.onnx"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)


def available() -> bool:
    """Whether the exporter and the runtime can both be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def export_graph(network: nn.Module) -> bytes:
    """The network as a serialised ONNX graph (onnx.ModelProto) with a dynamic batch axis."""
    probe = torch.zeros(1, 3, 224, 224)
    # torch.export-based exporter (the TorchScript one is deprecated).
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
    graph: bytes = program.model_proto.SerializeToString()
    return graph


class OnnxRunner(OnnxSession):
    """network(batch) through onnxruntime on the CPU, exported in memory."""

    def __init__(self, network: nn.Module, threads: int) -> None:
        super().__init__(export_graph(network), threads)
