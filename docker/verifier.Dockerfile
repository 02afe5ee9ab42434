# syntax=docker/dockerfile:1
# The verifier (Edit-Verify-Reason): the base install only, no torch, so the image stays slim.
# Build from the repository root:  docker build -f docker/verifier.Dockerfile -t etchr/verifier:0.1.0 .
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HEALTHCHECK_URL=http://127.0.0.1:8002/healthz

# The source is bind-mounted for the install only (writes are discarded), so no copy of it stays in a layer;
# the constraints pin every package to the versions the tests ran against.
RUN --mount=type=bind,target=/src,rw \
    PIP_CONSTRAINT=/src/docker/constraints.txt pip install /src \
    && install -m 0755 /src/docker/healthcheck.py /usr/local/bin/etchr-healthcheck \
    && groupadd --system --gid 10001 etchr \
    && useradd --system --uid 10001 --gid etchr --home-dir /home/etchr --create-home etchr \
    && python -c "import etchr_verifier.api" \
    && if python -c "import torch" 2>/dev/null; then echo "torch leaked into the verifier image" >&2; exit 1; fi

USER 10001:10001
WORKDIR /home/etchr
EXPOSE 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["etchr-healthcheck"]
CMD ["etchr", "serve", "verifier", "--host", "0.0.0.0"]
