"""The embedder service: image bytes to embeddings with a torchvision CNN."""
