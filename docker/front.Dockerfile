# The HTTP fronts, torch-free: the editor's front (`etchr serve editor --no-worker`), the verifier and the
# reward service (its query workers run in-process) all run from this one image; the command picks which.
# The base install only, so no torch, diffusers or model: the editor's GPU workers (and the one-box editor
# whose front hosts its worker in-process) run docker/editor.Dockerfile instead.
# Build from the repository root:  docker build -f docker/front.Dockerfile -t etchr/front:0.1.0 .
# Run one service:  docker run -p 8002:8002 etchr/front:0.1.0 etchr serve verifier --host 0.0.0.0
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The source is bind-mounted for the install only (writes are discarded), so no copy of it stays in a layer;
# the constraints pin every package to the versions the tests ran against. The build fails if a front's app
# cannot be imported without torch, or if torch or diffusers got installed at all.
RUN --mount=type=bind,target=/src,rw \
    PIP_CONSTRAINT=/src/docker/constraints.txt pip install /src \
    && install -m 0755 /src/docker/healthcheck.py /usr/local/bin/etchr-healthcheck \
    && groupadd --system --gid 10001 etchr \
    && useradd --system --uid 10001 --gid etchr --home-dir /home/etchr --create-home etchr \
    && python -c "import etchr_tools.cli, etchr_editor.service, etchr_editor.api, etchr_verifier.api, etchr_reward.api" \
    && if python -c "import torch" 2>/dev/null || python -c "import diffusers" 2>/dev/null; then \
        echo "torch or diffusers leaked into the front image" >&2; exit 1; \
    fi

USER 10001:10001
WORKDIR /home/etchr
EXPOSE 8001 8002 8003
# No HEALTHCHECK_URL: etchr-healthcheck reads the service and its port from the container's command and
# probes its /readyz (healthy only when it can serve: Redis writable, an MLLM configured).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["etchr-healthcheck"]
# The image serves three services: the command names one (`etchr serve editor --no-worker`, `etchr serve
# verifier`, `etchr serve reward`, each with `--host 0.0.0.0`). Without one it lists them.
CMD ["etchr", "--help"]
