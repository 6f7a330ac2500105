# syntax=docker/dockerfile:1
# genserve: the API image (the default target) and the training image (--target train).
#   docker build -t genserve:cpu .                                        CPU-only torch
#   docker build --build-arg TORCH_VARIANT=cu130 -t genserve:cu130 .      CUDA torch
# docs/deploy.md is the operator's guide.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- deps: a virtualenv with torch and the project's dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS deps
# The torch wheel: "cpu", or a CUDA build published for TORCH_VERSION (2.13: cu126, cu130).
# CUDA wheels bring their own CUDA runtime, so no CUDA base image is needed: the host's NVIDIA
# driver and Container Toolkit are enough.
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Read by pip from the environment, for builders that reach packages another way (scripts/build-image).
ARG PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch alone first: it is most of the image and changes least often.
RUN python -m venv /opt/venv \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
# The rest is read from pyproject.toml so the two lists never drift; torch is already satisfied.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# -- runtime: what both images share -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Fixed numeric uids: Kubernetes' runAsNonRoot can only check a numeric USER, and the files in the
# weights and runs volumes keep one owner whichever image wrote them. The API (10001) only reads
# the weights; the trainer (10002) owns them, so a compromised server cannot replace a model.
RUN useradd --uid 10001 --user-group --create-home --no-log-init genserve \
 && useradd --uid 10002 --user-group --create-home --no-log-init genserve-train
COPY --from=deps /opt/venv /opt/venv
# NVIDIA_DRIVER_CAPABILITIES: older Container Toolkits mount only "utility" (no CUDA) when unset.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GENSERVE_WEIGHTS_DIR=/srv/genserve/weights \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /srv/genserve
# Owned by the trainer so that a named volume mounted here starts as a copy the train service can
# write into; readable, not writable, by the API. A volume or bind mount at this path replaces them.
COPY --chown=10002:10002 weights/ weights/
COPY models/ models/
COPY app/ app/

# -- train: `python -m models.train`, with Fashion-MNIST from Debian's package -------------------
FROM runtime AS train
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/*
# Resumable training state (--state-dir runs/NAME); owned by the trainer for the same reason as weights/.
RUN install -d -o 10002 -g 10002 runs
USER 10002
ENTRYPOINT ["python", "-m", "models.train"]
CMD ["--help"]

# -- api: the service (the default target, so it comes last) ------------------------------------
FROM runtime AS api
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# One worker process per visible GPU (each loads the models once), one on a CPU-only host;
# GENSERVE_WORKERS overrides. Shell form so the count and the server's guards are taken from the
# settings at start (`python -m app.server` prints them as flags: the header and body read
# deadlines, keep-alive, the connection cap and the grace after SIGTERM,
# GENSERVE_GRACEFUL_TIMEOUT_S). The guards are read first, and a setting they refuse stops the
# start with its one-line error: inside `$(...)` on uvicorn's line a failure expanded to nothing,
# and uvicorn served without them (issue 37). `exec` makes uvicorn PID 1, so `docker stop`
# reaches it and it drains in-flight requests. Give the container's stop timeout (Docker: 10 s;
# Kubernetes: terminationGracePeriodSeconds) at least that grace.
# hadolint ignore=DL3025
CMD guards="$(python -m app.server)" || exit; \
    exec uvicorn app.main:app --host 0.0.0.0 --port 8000 \
    --workers "${GENSERVE_WORKERS:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}" \
    $guards
