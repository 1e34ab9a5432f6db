# imgsearch images, one stage per service:
#   docker build --target searcher -t imgsearch-searcher .       (no torch: small)
#   docker build --target embedder-slim -t imgsearch-embedder-slim .
#                          (no torch: serves a file from imgsearch-embedder-export, mounted at
#                           /models/embedder.onnx)
#   docker build --target client -t imgsearch .                   (the imgsearch CLI and search page)
#   docker build --target embedder -t imgsearch-embedder .       (CPU torch)
#   docker build --target embedder --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       -t imgsearch-embedder:cuda .                              (CUDA torch; run with --gpus all)
# No secrets are baked in: DSN, tokens and keys come from the environment or mounted files.
#
# Air-gapped builds (no Docker Hub, no PyPI; scripts/compose-test does this): a local base image
# with python3 and python3-venv, and the wheels in ./wheelhouse:
#   --build-arg PYTHON_IMAGE=imgsearch-base:bookworm \
#   --build-arg "PIP_INSTALL_OPTIONS=--no-index --find-links=/wheelhouse"
# Each image copies only its installed environment (/opt/venv) from its build stage: neither the
# sources nor the wheels are in a service's image. The stages that need torch come last, so a
# builder without BuildKit (which builds every stage before its target) never builds them for
# the others.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# What every image runs on: Python, and the unprivileged user the services run as.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 --user-group imgsearch

# The sources and a virtual environment to install them into, from PyPI or the wheelhouse.
FROM base AS build
COPY wheelhouse /wheelhouse
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgsearch ./imgsearch
COPY serving ./serving
COPY webui ./webui
COPY embedder ./embedder
COPY searcher ./searcher
COPY stack ./stack

FROM build AS searcher-build
ARG PIP_INSTALL_OPTIONS=
RUN pip install ${PIP_INSTALL_OPTIONS} ".[searcher]"

FROM base AS searcher
COPY --from=searcher-build /opt/venv /opt/venv
USER imgsearch
ENV IMGSEARCH_SEARCHER_ADDRESS=[::]:50052 \
    IMGSEARCH_SEARCHER_METRICS_ADDRESS=[::]:9102
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["imgsearch-health", "localhost:50052"]
ENTRYPOINT ["imgsearch-searcher"]

FROM build AS embedder-slim-build
ARG PIP_INSTALL_OPTIONS=
RUN pip install ${PIP_INSTALL_OPTIONS} ".[embedder-onnx]"

# The embedder without torch: ONNX Runtime serves a model file written by
# `imgsearch-embedder-export` (its weights' fingerprint and probe vectors travel inside it).
FROM base AS embedder-slim
COPY --from=embedder-slim-build /opt/venv /opt/venv
RUN mkdir /models && chown imgsearch:imgsearch /models
USER imgsearch
ENV IMGSEARCH_EMBEDDER_MODEL_FILE=/models/embedder.onnx \
    IMGSEARCH_EMBEDDER_ADDRESS=[::]:50051 \
    IMGSEARCH_EMBEDDER_METRICS_ADDRESS=[::]:9101
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["imgsearch-health", "localhost:50051"]
ENTRYPOINT ["imgsearch-embedder"]

FROM build AS client-build
ARG PIP_INSTALL_OPTIONS=
RUN pip install ${PIP_INSTALL_OPTIONS} ".[web]"

FROM base AS client
# The CLI and the search page (`imgsearch web --address 0.0.0.0:8080`, behind a page token).
COPY --from=client-build /opt/venv /opt/venv
USER imgsearch
ENTRYPOINT ["imgsearch"]

FROM build AS embedder-build
ARG PIP_INSTALL_OPTIONS=
# The CPU build of torch by default; a CUDA index URL gives the GPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install ${PIP_INSTALL_OPTIONS} --extra-index-url "${TORCH_INDEX_URL}" ".[embedder,onnx]"

FROM base AS embedder
COPY --from=embedder-build /opt/venv /opt/venv
RUN mkdir /models && chown imgsearch:imgsearch /models
USER imgsearch
# torchvision keeps downloaded weights here: mount a volume (or a copy of the .pth file).
ENV TORCH_HOME=/models \
    IMGSEARCH_EMBEDDER_ADDRESS=[::]:50051 \
    IMGSEARCH_EMBEDDER_METRICS_ADDRESS=[::]:9101
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["imgsearch-health", "localhost:50051"]
ENTRYPOINT ["imgsearch-embedder"]
