"""The embedder service: image bytes to embeddings with a torchvision CNN."""

from imgsearch._extras import require_extra

require_extra("embedder", "torch", "torchvision")
