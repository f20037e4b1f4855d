# syntax=docker/dockerfile:1
#
# tta-serve images (docs/deploy.md says how to build, run and check them on a GPU host).
#
#   docker build -t tta-serve .                              # serving image (the default target)
#   docker run --gpus all -p 50051:50051 -p 3000:3000 \
#     -v "$PWD/tokens:/run/secrets/tta-serve-tokens:ro" tta-serve     # tokens: see the serve stage
#   docker build --target train -t tta-serve-train .         # training image (torch, CUDA)
#
# Why this base: the default onnxruntime-gpu wheel on PyPI (1.31, pinned in constraints.txt) is
# built for CUDA 13.0 and cuDNN 9 (onnxruntime/capi/build_and_package_info.py: cuda_version 13.0;
# libonnxruntime_providers_cuda.so needs libcudart.so.13, libcublas.so.13, libcurand.so.10,
# libcufft, libcudnn.so.9). The CUDA runtime + cuDNN image supplies exactly those libraries, so
# the serving image installs no nvidia-* wheels and no torch. The host needs an NVIDIA driver that
# supports CUDA 13.0 (>= 580) and the NVIDIA Container Toolkit; without a GPU the same image
# serves on the CPU (--device auto falls back and logs why).
#
# Every pip install goes through constraints.txt, the project's one pinned dependency set
# (tests/test_container.py checks both).

ARG CUDA_VERSION=13.0.2
ARG UBUNTU=ubuntu24.04

# ---------------------------------------------------------------------------- shared base
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU} AS python-cuda
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The distribution's Python 3.12 (requires-python >= 3.11). Package versions are not pinned
# here: the image tag fixes the release, and the archive drops superseded versions, so exact
# apt pins would break rebuilds; the Python dependencies are what constraints.txt pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------- serving build
# Dependencies first (a layer that only changes with pyproject.toml / constraints.txt), then the
# package itself without dependencies: editing service/ does not reinstall onnxruntime & co.
FROM python-cuda AS serve-build
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml constraints.txt README.md ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements-base.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements-base.txt
COPY service/ service/
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && pip check

# ---------------------------------------------------------------------------- train target
# torch/torchvision from PyPI are CUDA 13 builds that bring their own CUDA/cuDNN/NCCL wheels
# (pinned in constraints.txt). Data, runs and the model repository are volumes:
#   docker run --gpus all --shm-size 2g -v "$PWD/data:/data" -v "$PWD/runs:/runs" \
#     -v "$PWD/models:/models" tta-serve-train fit --config recipes/digits.toml \
#     --data /data/digits --output /runs/digits
FROM python-cuda AS train
WORKDIR /app
RUN python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group tta \
    && mkdir -p /data /runs /models \
    && chown tta:tta /data /runs /models
ENV PATH=/opt/venv/bin:$PATH \
    TTA_SERVE_MODELS_DIR=/models
COPY pyproject.toml constraints.txt README.md ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))" > requirements-train.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements-train.txt
COPY service/ service/
COPY training/ training/
COPY recipes/ recipes/
RUN pip install --no-cache-dir --no-deps -c constraints.txt ".[train]" \
    && pip check
USER 10001:10001
VOLUME ["/data", "/runs", "/models"]
ENTRYPOINT ["training"]
CMD ["--help"]

# ---------------------------------------------------------------------------- serving image
# The default target (last stage): the venv from serve-build, the model repository, a non-root
# user. The bundled models/ are baked in at /models; mount your own repository over it instead:
#   docker run --gpus all -p 50051:50051 -p 3000:3000 -v "$PWD/models:/models:ro" tta-serve
# or anywhere else with -e TTA_SERVE_MODELS_DIR=/path (or pass --models-dir).
FROM python-cuda AS serve
RUN useradd --create-home --uid 10001 --user-group tta
COPY --from=serve-build /opt/venv /opt/venv
COPY models/ /models/
# Token authorisation is on: without tokens the server refuses to start (docs/deploy.md, "TLS and
# tokens"). Mount a token file, one `TOKEN SCOPE[,SCOPE]` a line (scopes: infer, admin), where
# Docker and Compose put secrets:
#   docker run -v "$PWD/tokens:/run/secrets/tta-serve-tokens:ro" ... tta-serve
# or pass the lines in TTA_SERVE_TOKENS (`;`-separated), or serve a trusted network without
# tokens with -e TTA_SERVE_AUTH=off. The file is re-read when it changes (rotation, no restart).
# TLS: mount a certificate and key and set TTA_SERVE_TLS_CERT and TTA_SERVE_TLS_KEY
# (+ TTA_SERVE_TLS_CLIENT_CA: mutual TLS); the HEALTHCHECK probes over TLS then.
# DL3064 reads "TOKEN" in a name as a secret; TTA_SERVE_TOKEN_FILE is the path a secret is mounted at.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    TTA_SERVE_MODELS_DIR=/models \
    TTA_SERVE_AUTH=required \
    TTA_SERVE_TOKEN_FILE=/run/secrets/tta-serve-tokens \
    BENTOML_HOME=/home/tta/bentoml
USER 10001:10001
WORKDIR /home/tta
EXPOSE 50051 3000
# Healthy = the gRPC health service on :50051 says SERVING (NOT_SERVING on shutdown) or the HTTP
# service's /readyz on :3000 answers 200, so `tta-serve`, `tta-serve grpc` and `tta-serve http`
# all report correctly (service/process/runner.py: healthcheck; 2 s per probe).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys; from service.process.runner import healthcheck; sys.exit(healthcheck())"]
ENTRYPOINT ["tta-serve"]
