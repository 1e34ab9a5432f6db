"""The embedder service: image bytes to embeddings with a torchvision CNN, run by torch (and
ONNX Runtime), or read from an exported ONNX file and run by ONNX Runtime alone."""

import importlib.util

from imgsearch._extras import require_extra

if importlib.util.find_spec("onnxruntime") is None:  # an exported model needs nothing more
    require_extra("embedder", "torch", "torchvision")
