#!/usr/bin/env bash
# The three GPU benchmarks in ONE command, for a lent GPU machine (no network; Python 3.12 with torch,
# transformers, accelerate, peft, ... but no diffusers, no service stack, no redis-server). Prepare first,
# here, with `bash scripts/gpu-prepare.sh` (fills .whl/ and .gpu-debs/); then, with the device tool:
#
#   run  carry=[".whl", ".gpu-debs"]  timeout_s=600  command="bash bench/gpu_all.sh"
#
# It installs .whl/*.whl into /tmp/site, unpacks redis-server from .gpu-debs/ into /tmp/redisroot (linking
# only the libraries the image lacks), puts the repo's source folders on PYTHONPATH, prints nvidia-smi and
# the versions in use, then runs bench/gpu_editor.py, gpu_sft_step.py and gpu_rl_step.py one after another,
# each under `timeout`, going on to the next when one fails. Everything is teed into $OUT/gpu_all.log
# (./gpu-out/gpu_all.log where OUT is unset); the last line sums up the exit codes (124 = timed out).
#
# Budget (~8.5 min at most, less expected on an H100/H200; see docs/benchmarks.md): the scripts' defaults
# would take far longer (the editor alone: 40-step edits in batches of 4 at 1024², eager and compiled), so:
#   gpu_editor.py    --steps 10 --batches 1,2 --repeats 1      (512² and 1024², eager + compiled,
#                    sampler and one served edit each)  250 s
#   gpu_sft_step.py  defaults (512² and 1024², rank 64 and 768, 3 timed steps each)               90 s
#   gpu_rl_step.py   --sample-steps 8 --timestep-fraction 0.25  (G = 8, 2 groups, 512², rank 64:
#                    2 trained timesteps; the defaults' 25 steps / 15 trained scale sampling and update)  140 s
# A bench cut at its limit keeps the lines it printed (the editor prints eager before compiled).
# Override with GPU_EDITOR_ARGS / GPU_SFT_ARGS / GPU_RL_ARGS and GPU_EDITOR_TIMEOUT / GPU_SFT_TIMEOUT /
# GPU_RL_TIMEOUT. `--quick` passes only --quick to each (tiny pipeline on CPU: a smoke test anywhere).
# GPU_WHEELS / GPU_DEBS (default .whl / .gpu-debs) and GPU_SITE / GPU_REDISROOT (default /tmp/site,
# /tmp/redisroot) point elsewhere, e.g. for a rehearsal on a CPU machine with cp311 wheels.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "gpu_all.sh: unknown argument $arg (only --quick)" >&2
            exit 2
            ;;
    esac
done

OUT_DIR="${OUT:-$REPO/gpu-out}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_all.log"
WHEELS="${GPU_WHEELS:-.whl}"
DEBS="${GPU_DEBS:-.gpu-debs}"
SITE="${GPU_SITE:-/tmp/site}"
REDISROOT="${GPU_REDISROOT:-/tmp/redisroot}"

if ((QUICK)); then
    EDITOR_ARGS=(--quick) SFT_ARGS=(--quick) RL_ARGS=(--quick)
else
    read -ra EDITOR_ARGS <<<"${GPU_EDITOR_ARGS---steps 10 --batches 1,2 --repeats 1}"
    read -ra SFT_ARGS <<<"${GPU_SFT_ARGS-}"
    read -ra RL_ARGS <<<"${GPU_RL_ARGS---sample-steps 8 --timestep-fraction 0.25}"
fi
EDITOR_TIMEOUT="${GPU_EDITOR_TIMEOUT:-250}"
SFT_TIMEOUT="${GPU_SFT_TIMEOUT:-90}"
RL_TIMEOUT="${GPU_RL_TIMEOUT:-140}"

stamp() { echo "=== [$(date -u +%H:%M:%S)] $*"; }

install_wheels() {
    stamp "install $WHEELS/*.whl into $SITE"
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if ((${#wheels[@]} == 0)); then
        echo "no wheels in $WHEELS: run 'bash scripts/gpu-prepare.sh' here and carry .whl"
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}"
}

install_redis() {
    stamp "redis-server from $DEBS into $REDISROOT"
    shopt -s nullglob
    local debs=("$DEBS"/*.deb)
    shopt -u nullglob
    if ((${#debs[@]} == 0)); then
        echo "no .debs in $DEBS; using $(command -v redis-server || echo 'NO redis-server (gpu_editor.py and gpu_rl_step.py will fail)')"
        return 0
    fi
    rm -rf "$REDISROOT"
    mkdir -p "$REDISROOT/bin" "$REDISROOT/missing-libs"
    local deb
    for deb in "${debs[@]}"; do
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$deb" "$REDISROOT" || return 1
        else  # no dpkg: a .deb is an ar archive holding data.tar.*
            deb="$(readlink -f "$deb")"
            (cd "$REDISROOT" && ar p "$deb" "$(ar t "$deb" | grep '^data.tar')" | tar -xJ) || return 1
        fi
    done
    # Link into $REDISROOT/missing-libs only the libraries the image lacks, so its own copies win; repeat for
    # what those need in turn.
    local binary="$REDISROOT/usr/bin/redis-check-rdb" round missing so found
    for round in 1 2 3 4; do
        if command -v ldd >/dev/null; then
            missing="$(LD_LIBRARY_PATH="$REDISROOT/missing-libs" ldd "$binary" 2>/dev/null | awk '/not found/ {print $1}')"
        else
            missing="$(cd "$REDISROOT" && find usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu -maxdepth 1 -name '*.so.*' -printf '%f\n')"
        fi
        [[ -z "$missing" ]] && break
        for so in $missing; do
            found="$(find "$REDISROOT/usr/lib" "$REDISROOT/lib" -name "$so" 2>/dev/null | head -1)"
            [[ -n "$found" ]] && ln -sf "$found" "$REDISROOT/missing-libs/$so"
        done
        command -v ldd >/dev/null || break
    done
    echo "libraries the image lacks, taken from the .debs: $(ls "$REDISROOT/missing-libs" | tr '\n' ' ')"
    # argv[0] must stay 'redis-server' (the binary is shared with redis-check-rdb and picks its role by name).
    cat >"$REDISROOT/bin/redis-server" <<EOF
#!/bin/sh
export LD_LIBRARY_PATH="$REDISROOT/missing-libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$REDISROOT/usr/bin/redis-server" "\$@"
EOF
    chmod +x "$REDISROOT/bin/redis-server"
    export PATH="$REDISROOT/bin:$PATH"
    local version
    version="$(redis-server --version 2>&1)" || { echo "redis-server does not run: $version"; return 1; }
    echo "$(command -v redis-server): $version"
}

preflight() {
    stamp "versions and imports (python3 = $(command -v python3))"
    GPU_SITE="$SITE" python3 - <<'PY'
import importlib
import importlib.metadata as md
import os
import sys

from packaging.requirements import Requirement

print("python", sys.version.split()[0], sys.executable)
names = [
    "torch", "transformers", "diffusers", "accelerate", "peft", "huggingface-hub", "tokenizers", "safetensors",
    "numpy", "pillow", "pydantic", "pydantic-settings", "fastapi", "starlette", "uvicorn", "uvloop", "redis",
    "openai", "httpx", "typer", "rich", "prometheus-client", "typing-extensions", "anyio",
]
versions = []
for name in names:
    try:
        versions.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        versions.append(f"{name} MISSING")
print("; ".join(versions))
# What the carried wheels require, checked against what this interpreter finds first.
unmet = []
for dist in md.distributions(path=[os.environ["GPU_SITE"]]):
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            unmet.append(f"{dist.metadata['Name']} needs {req} (missing)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{dist.metadata['Name']} needs {req} (found {have})")
print("carried wheels' requirements:", "all met" if not unmet else "UNMET: " + "; ".join(sorted(set(unmet))))
failed = []
modules = ("diffusers", "openai", "etchr_tools.cli", "etchr_editor.api", "etchr_reward.api", "tests.support.mllm_server")
for module in modules:
    try:
        importlib.import_module(module)
    except Exception as exc:  # report every failure, then let the benches say the rest
        failed.append(f"{module}: {type(exc).__name__}: {exc}")
print("imports:", "ok" if not failed else "FAILED: " + " | ".join(failed))
sys.exit(1 if unmet or failed else 0)
PY
}

RESULTS=()
run_bench() {
    local name="$1" limit="$2" script="$3"
    shift 3
    stamp "$name: timeout ${limit}s: python3 $script $*"
    local started=$SECONDS rc
    timeout -k 15 "$limit" python3 "$script" "$@"
    rc=$?
    ((rc == 124 || rc == 137)) && echo "!!! $name stopped at its ${limit}s limit (what it printed above stands)"
    RESULTS+=("$name=$rc ($((SECONDS - started))s)")
}

main() {
    local started=$SECONDS setup_rc=0
    stamp "bench/gpu_all.sh $* (repo $REPO, log $LOG)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
    else
        echo "no nvidia-smi: not a GPU machine"
    fi
    install_wheels || setup_rc=1
    install_redis || setup_rc=1
    export PYTHONPATH="$SITE:$REPO/shared:$REPO/services/editor:$REPO/services/verifier:$REPO/services/reward:$REPO/training:$REPO/tools:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
    preflight || setup_rc=1
    echo "setup took $((SECONDS - started))s"

    run_bench gpu_editor "$EDITOR_TIMEOUT" bench/gpu_editor.py "${EDITOR_ARGS[@]}"
    run_bench gpu_sft_step "$SFT_TIMEOUT" bench/gpu_sft_step.py "${SFT_ARGS[@]}"
    run_bench gpu_rl_step "$RL_TIMEOUT" bench/gpu_rl_step.py "${RL_ARGS[@]}"

    local summary="gpu_all summary: setup=$setup_rc ${RESULTS[*]} total $((SECONDS - started))s"
    stamp "done"
    echo "$summary"
    ((setup_rc == 0)) && ! grep -qE '=[1-9]' <<<"${RESULTS[*]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # sourced (to try one step): define only
    : >"$LOG"
    main "$@" 2>&1 | tee -a "$LOG"
    exit "${PIPESTATUS[0]}"
fi
