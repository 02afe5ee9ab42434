#!/usr/bin/env bash
# CI stage: build the two images and run them end to end on one Docker network
# (tests/deploy/test_containers.py).
#
# Base images cannot be pulled here, so the tags the Dockerfiles name are built as stand-ins from Debian
# packages (debootstrap bookworm: Python 3.11, the Dockerfiles' minor; the editor's base adds the CPU torch
# wheel). docs/deployment.md says what that proves and what it does not. Stand-ins are cached under
# $CI_CONTAINERS_CACHE (the root filesystem as a tarball, keyed by the recipe's hash; the images stay in
# Docker's store, labelled with it), so a later run on the same machine skips debootstrap; from scratch the
# stage rebuilds everything.
#
# Installs Debian's docker.io when missing and starts dockerd when none answers; stops only a daemon it
# started.
set -euo pipefail
{  # read whole before it runs: an edit to this file mid-run cannot derail it
cd "$(dirname "$0")/.."
REPO=$(pwd)
CACHE=${CI_CONTAINERS_CACHE:-/var/cache/etchr-ci}
# The Debian mirror this machine's apt already uses (deb822 sources first, then the one-line format).
apt_mirror() {
    awk '$1 == "URIs:" {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null ||
        true
    awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true
}
MIRROR=${CI_DEBIAN_MIRROR:-$(apt_mirror | head -1)}
[ -n "$MIRROR" ] || { echo "no Debian mirror in apt's sources: set CI_DEBIAN_MIRROR" >&2; exit 1; }
TORCH_VERSION=2.13.0  # the editor base's torch: the CUDA tag's version, here as the CPU wheel
FRONT_BASE=$(awk '/^FROM /{print $2; exit}' docker/front.Dockerfile)
EDITOR_BASE=$(awk '/^FROM /{print $2; exit}' docker/editor.Dockerfile)
REDIS_IMAGE=$(awk '$1 == "image:" && $2 ~ /^redis:/ {print $2; exit}' docker-compose.yml)
IMAGE_TAG=${IMAGE_TAG:-0.1.0}
mkdir -p "$CACHE"
stage_start=$(date +%s)
log() { printf '[ci-containers %4ss] %s\n' "$(($(date +%s) - stage_start))" "$*"; }

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    log "installing docker.io and debootstrap"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq docker.io debootstrap >/dev/null
fi
# Debian's client: it drives the engine's built-in BuildKit (RUN --mount) without the buildx plugin.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
export DOCKER DOCKER_BUILDKIT=1

started_dockerd=""
cleanup() {
    if [ -n "$started_dockerd" ]; then
        log "stopping the dockerd this stage started (pid $started_dockerd)"
        $SUDO kill -TERM "$started_dockerd" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
    fi
}
trap cleanup EXIT
if ! $SUDO "$DOCKER" info >/dev/null 2>&1; then
    log "no Docker daemon answers: starting dockerd"
    $SUDO dockerd >"$CACHE/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 60); do $SUDO "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    $SUDO "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log"; exit 1; }
fi

# The recipe of both stand-ins; its hash names the cache entries, so editing it rebuilds them.
standin_recipe() {
    declare -f build_standin
    echo "mirror=$MIRROR torch=$TORCH_VERSION"
}
build_standin() {  # $1 = tag, $2 = plain | torch (the editor's base) | redis, $3 = the tarball to write
    local tag=$1 with=$2 root include=python3,python3-pip,ca-certificates
    [ "$with" = redis ] && include=redis-server,redis-tools
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    debootstrap --variant=minbase --include=$include bookworm "$root" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; return 1; }
    if [ "$with" = redis ]; then
        # The official image's build turns protected mode off (it listens on the container's network).
        mkdir -p "$root/data"
        printf '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n' >"$root/usr/local/bin/redis-server"
        chmod 0755 "$root/usr/local/bin/redis-server"
    fi
    # What the real tags give a Dockerfile: `python` and `pip` on PATH, pip allowed to install system-wide.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if [ "$with" = torch ]; then
        # Fetched by the host's pip (its config finds the CPU wheel on this disk), installed offline inside.
        mkdir -p "$root/tmp/wheels"
        "$REPO/.venv/bin/python" -m pip download -q -d "$root/tmp/wheels" "torch==$TORCH_VERSION"
        chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin PIP_ROOT_USER_ACTION=ignore \
            PIP_DISABLE_PIP_VERSION_CHECK=1 \
            python3 -m pip install -q --no-index --find-links /tmp/wheels "torch==$TORCH_VERSION"
        rm -rf "$root/tmp/wheels"
    fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/root/.cache
    : >"$root/etc/resolv.conf"
    tar -C "$root" -cf "$3" .
    rm -rf "$root"
}
RECIPE_HASH=$(standin_recipe | sha256sum | cut -c1-16)
# This machine's CA bundle goes into each stand-in on top of the cached root filesystem: where the network
# re-signs TLS (as here), pip inside a build trusts only that bundle. It is not part of the debootstrap cache.
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
STANDIN_HASH=$( (echo "$RECIPE_HASH"; cat "$CA_BUNDLE") | sha256sum | cut -c1-16)
ensure_standin() {  # $1 = tag, $2 = plain | torch | redis
    local tag=$1 with=$2 tarball raw ctx
    tarball="$CACHE/$(echo "$tag" | tr '/:' '__')-$RECIPE_HASH.tar"
    raw="etchr-ci/standin-rootfs:$(echo "$tag" | tr '/:' '__')-$RECIPE_HASH"
    if [ "$($DOCKER image inspect -f '{{index .Config.Labels "etchr.standin"}}' "$tag" 2>/dev/null)" = "$STANDIN_HASH" ]; then
        log "stand-in $tag: cached image"
        return
    fi
    if ! $DOCKER image inspect "$raw" >/dev/null 2>&1; then
        if [ ! -s "$tarball" ]; then
            log "stand-in $tag: debootstrap bookworm ($with)"
            build_standin "$tag" "$with" "$tarball.partial"
            mv "$tarball.partial" "$tarball"
        fi
        log "stand-in $tag: importing $tarball"
        local cmd='["python3"]' workdir=/
        [ "$with" = redis ] && cmd='["redis-server"]' workdir=/data  # its AOF lands in the volume at /data
        $DOCKER import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
            --change "CMD $cmd" --change "WORKDIR $workdir" \
            "$tarball" "$raw" >/dev/null
    fi
    ctx=$(mktemp -d)
    cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
    printf 'FROM %s\nCOPY ca-certificates.crt %s\nLABEL etchr.standin=%s\n' "$raw" "$CA_BUNDLE" "$STANDIN_HASH" \
        >"$ctx/Dockerfile"
    $DOCKER build -q -t "$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
    # Old recipes' tarballs of this tag are dead weight.
    find "$CACHE" -maxdepth 1 -name "$(echo "$tag" | tr '/:' '__')-*.tar" ! -name "$(basename "$tarball")" -delete
}

if [ "${1:-}" != "--no-build" ]; then
    t0=$(date +%s)
    ensure_standin "$FRONT_BASE" plain
    ensure_standin "$EDITOR_BASE" torch
    ensure_standin "$REDIS_IMAGE" redis
    log "stand-in bases ready in $(($(date +%s) - t0)) s"

    : >"$CACHE/images.tsv"
    for image in front editor; do
        t0=$(date +%s)
        log "building etchr/$image:$IMAGE_TAG"
        $DOCKER build -q -f "docker/$image.Dockerfile" -t "etchr/$image:$IMAGE_TAG" . >/dev/null
        seconds=$(($(date +%s) - t0))
        bytes=$($DOCKER image inspect -f '{{.Size}}' "etchr/$image:$IMAGE_TAG")
        printf 'etchr/%s:%s\t%s\t%s\n' "$image" "$IMAGE_TAG" "$seconds" "$bytes" >>"$CACHE/images.tsv"
        log "etchr/$image:$IMAGE_TAG built in ${seconds} s, $((bytes / 1000000)) MB"
    done
fi

# The tiny random-init checkpoint the editor container mounts (its edits are noise; the path is real).
. .venv/bin/activate
[ -f artifacts/tiny-editor/model_index.json ] || etchr tiny-editor artifacts/tiny-editor >/dev/null
# The containers run as UID 10001: a checkpoint is mounted read-only and must be world-readable, as
# docs/deployment.md tells operators (`etchr tiny-editor` writes it so; a copied one may not be).
chmod -R a+rX artifacts/tiny-editor
t0=$(date +%s)
ETCHR_CONTAINER_STAGE=1 IMAGE_TAG=$IMAGE_TAG OMP_NUM_THREADS=1 \
    python -m pytest tests/deploy/test_containers.py -n 0 -q -p no:cacheprovider
log "container checks done in $(($(date +%s) - t0)) s; stage total $(($(date +%s) - stage_start)) s"
exit 0
}
