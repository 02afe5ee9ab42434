#!/usr/bin/env bash
# Prepare, on THIS machine (it reaches the package registries and apt), what bench/gpu_all.sh needs on a lent GPU
# machine that reaches nothing: its image has Python 3.12 with torch, transformers, accelerate, peft, numpy,
# pillow, safetensors, httpx, rich, typer, prometheus-client, tqdm (/work/.library/device/KINDS.md), but no
# diffusers, no service stack (pydantic, fastapi, uvicorn, redis-py, openai) and no redis-server.
#
#   bash scripts/gpu-prepare.sh      # fills .whl/ (CPython 3.12 wheels) and .gpu-debs/ (redis-server .debs)
#
# Both folders are git-ignored through .git/info/exclude (added here if missing) and travel with the device
# tool's `carry: [".whl", ".gpu-debs"]`; on the device, `bash bench/gpu_all.sh` installs and runs them.
# The project's own packages need no wheel: the repo travels, and gpu_all.sh puts its source folders on
# PYTHONPATH. Pins match the dev venv (pyproject's ranges); keep one version of each name.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    # the editor's model code
    diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 zipp==4.1.2
    # settings and the HTTP services (fastapi under uvicorn; uvicorn picks the image's uvloop)
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    pydantic-settings==2.16.3 python-dotenv==1.2.4
    fastapi==0.165.0 starlette==1.10.0 opentelemetry-api==1.45.2 annotated-doc==0.0.7 python-multipart==0.0.34
    uvicorn==0.54.0 h11==0.16.0
    redis==8.1.0
    # the MLLM client (the reward service and the test MLLM's callers)
    openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1
    # recent floors of the above (pydantic: typing_extensions>=4.16, openai: anyio>=4.10, httpx2: idna>=3.18);
    # carried so an older copy in the image cannot fail an import; all backward compatible
    typing_extensions==4.16.0 anyio==4.16.0 idna==3.20
)
# redis-server (Debian's, glibc >= 2.34) and the libraries it links that a CUDA image may lack; gpu_all.sh
# links only those the device really lacks (ldd), so the image's own copies win.
DEBS=(
    redis-server redis-tools libjemalloc2 liblzf1 libatomic1
    libssl3 libsystemd0 libcap2 libgcrypt20 libgpg-error0 liblz4-1 libzstd1 liblzma5
)

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for path in /.whl/ /.gpu-debs/ /gpu-out/; do
    grep -qxF "$path" "$exclude" || echo "$path" >>"$exclude"
done

pip_python=""
for candidate in .venv/bin/python /tmp/venv/bin/python python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
        pip_python="$candidate"
        break
    fi
done
[[ -n "$pip_python" ]] || { echo "gpu-prepare: no python with pip found" >&2; exit 1; }

work="$(mktemp -d /tmp/gpu-prepare.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get download runs as _apt where it can reach the folder

echo "gpu-prepare: downloading ${#WHEELS[@]} wheels for CPython 3.12 manylinux x86_64 ..."
# py3-none-any wheels match these platform tags too; binary ones (pydantic_core, jiter) need a manylinux one.
"$pip_python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$work/whl" "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
count="$(find "$work/whl" -name '*.whl' | wc -l)"
if [[ "$count" -ne "${#WHEELS[@]}" ]]; then
    echo "gpu-prepare: expected ${#WHEELS[@]} wheels, got $count" >&2
    exit 1
fi

echo "gpu-prepare: downloading ${#DEBS[@]} .debs (redis-server and its libraries) ..."
if ! apt-cache show redis-server >/dev/null 2>&1; then
    apt-get update -qq
fi
mkdir -p "$work/debs"
chmod 777 "$work/debs"
(cd "$work/debs" && apt-get download -qq "${DEBS[@]}")

rm -rf .whl .gpu-debs
mv "$work/whl" .whl
mv "$work/debs" .gpu-debs
chmod 755 .gpu-debs

ls -1 .whl .gpu-debs
du -sh .whl .gpu-debs
total_kib="$(du -sck .whl .gpu-debs | tail -1 | cut -f1)"
echo "gpu-prepare: total $((total_kib / 1024)) MiB (the device tool carries at most 64 MiB with the repo)"
echo "gpu-prepare: now, on the device: run tool, carry [\".whl\", \".gpu-debs\"], command 'bash bench/gpu_all.sh'"
