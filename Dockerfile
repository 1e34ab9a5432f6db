# imgsearch images, one stage per service:
#   docker build --target searcher -t imgsearch-searcher .   (no torch: small)
#   docker build --target embedder -t imgsearch-embedder .   (CPU torch)
#   docker build --target embedder --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       -t imgsearch-embedder:cuda .                         (CUDA torch; run with --gpus all)
#   docker build --target client -t imgsearch .               (the imgsearch CLI and search page)
# No secrets are baked in: DSN, tokens and keys come from the environment or mounted files.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --user-group imgsearch
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imgsearch ./imgsearch
COPY serving ./serving
COPY webui ./webui
COPY embedder ./embedder
COPY searcher ./searcher
COPY stack ./stack

FROM base AS searcher
RUN pip install ".[searcher]"
USER imgsearch
ENV IMGSEARCH_SEARCHER_ADDRESS=[::]:50052 \
    IMGSEARCH_SEARCHER_METRICS_ADDRESS=[::]:9102
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["imgsearch-health", "localhost:50052"]
ENTRYPOINT ["imgsearch-searcher"]

FROM base AS embedder
# The CPU build of torch by default; a CUDA index URL gives the GPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" ".[embedder,onnx]" \
    && mkdir /models && chown imgsearch:imgsearch /models
USER imgsearch
# torchvision keeps downloaded weights here: mount a volume (or a copy of the .pth file).
ENV TORCH_HOME=/models \
    IMGSEARCH_EMBEDDER_ADDRESS=[::]:50051 \
    IMGSEARCH_EMBEDDER_METRICS_ADDRESS=[::]:9101
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["imgsearch-health", "localhost:50051"]
ENTRYPOINT ["imgsearch-embedder"]

FROM base AS client
# The CLI and the search page (`imgsearch web --address 0.0.0.0:8080`).
RUN pip install ".[web]"
USER imgsearch
ENTRYPOINT ["imgsearch"]
