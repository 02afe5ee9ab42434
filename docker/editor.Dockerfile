# The editor's GPU side: the standalone GPU worker (`etchr worker editor`, Kubernetes) and the one-box editor
# whose front runs its worker in-process (`etchr serve editor`, Docker Compose). torch comes from the CUDA
# PyTorch base image (its version is checked against pyproject's torch range by tests/deploy); `.[editor]`
# adds diffusers, transformers and peft on top. A front without a worker (`--no-worker`) needs none of that:
# it runs from the slim docker/front.Dockerfile.
# Build from the repository root:  docker build -f docker/editor.Dockerfile -t etchr/editor:0.1.0 .
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/models/hf \
    HEALTHCHECK_URL=http://127.0.0.1:8001/readyz

# The source is bind-mounted for the install only (writes are discarded), so no copy of it stays in a layer;
# the constraints pin every package except torch to the versions the tests ran against. /models is where a
# checkpoint (ETCHR_EDITOR_MODEL as a local dir) or the hub cache (HF_HOME) lives: owned by the service user
# so a fresh named volume mounted there is writable.
RUN --mount=type=bind,target=/src,rw \
    PIP_CONSTRAINT=/src/docker/constraints.txt pip install "/src[editor]" \
    && install -m 0755 /src/docker/healthcheck.py /usr/local/bin/etchr-healthcheck \
    && groupadd --system --gid 10001 etchr \
    && useradd --system --uid 10001 --gid etchr --home-dir /home/etchr --create-home etchr \
    && mkdir -p /models/hf \
    && chown -R etchr:etchr /models \
    && python -c "import torch, diffusers, etchr_editor.worker, etchr_editor.service"

USER 10001:10001
WORKDIR /home/etchr
EXPOSE 8001 9101
# Healthy only when the editor can edit: /readyz is 503 until the in-process worker's model is loaded and
# warmed up (and while Redis refuses writes); /healthz would say healthy with no model at all. The start
# period covers a load from local disk (docs/deployment.md, "Health checks", has the measured times); a
# first start that downloads the checkpoint takes longer and shows as unhealthy until it is done.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 CMD ["etchr-healthcheck"]
# The front with an in-process worker (one GPU box). Kubernetes runs `worker editor` from this image (its
# probe is the metrics port, 9101: set HEALTHCHECK_URL=http://127.0.0.1:9101/readyz to check it here) and
# the front from the slim image.
CMD ["etchr", "serve", "editor", "--host", "0.0.0.0"]
