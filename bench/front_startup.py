"""Start-up time and resident memory of each HTTP front (`etchr serve S --no-worker`), side by side.

For each service, starts the front as ops run it on Kubernetes (no in-process worker), times the spawn until
``/healthz`` answers 200, then reads the process's resident memory (VmRSS, VmHWM) and whether torch's shared
library is mapped. Repeats ``--runs`` times and prints medians, plus the ratio of each front to the verifier.

    python bench/front_startup.py --runs 5
    # the same against another checkout (e.g. before a change), side by side with this one:
    git worktree add /tmp/before <rev>
    python bench/front_startup.py --compare-tree /tmp/before --compare-cli etchr.cli
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from local_stack import free_port, with_tree

SERVICES = ("editor", "verifier", "reward")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def measure(
    service: str, timeout_s: float, *, cli: str = "etchr_tools.cli", tree: Path | None = None
) -> tuple[float, float, float, bool]:
    """(seconds to /healthz 200, VmRSS MiB, VmHWM MiB, torch mapped) for one start of ``service``.

    ``tree``: run another checkout's code (its package folders go first on PYTHONPATH) through ``cli``."""
    port = free_port()
    env = with_tree(
        {**os.environ, "ETCHR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "ETCHR_LOG_LEVEL": "warning"},
        tree,
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            cli,
            "serve",
            service,
            "--no-worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{service} exited with {proc.returncode} before /healthz answered")
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"{service}: /healthz did not answer within {timeout_s:g} s")
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        ready_s = time.perf_counter() - started
        time.sleep(0.3)  # let the first request's allocations settle before reading memory
        rss = _status_kib(proc.pid, "VmRSS") / 1024
        hwm = _status_kib(proc.pid, "VmHWM") / 1024
        return ready_s, rss, hwm, _maps_torch(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--services", default=",".join(SERVICES))
    parser.add_argument("--compare-tree", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--compare-cli", default="etchr_tools.cli", help="that checkout's CLI module")
    args = parser.parse_args()
    variants = [("", "etchr_tools.cli", None)]
    if args.compare_tree:
        variants.append((" (compared)", args.compare_cli, args.compare_tree.resolve()))
    rows: dict[str, tuple[float, float, float, bool]] = {}
    # Interleaved, so load on the machine falls on both variants alike.
    samples: dict[str, list[tuple[float, float, float, bool]]] = {}
    for _ in range(args.runs):
        for service in args.services.split(","):
            for label, cli, tree in variants:
                samples.setdefault(service + label, []).append(
                    measure(service, args.timeout, cli=cli, tree=tree)
                )
    for service, runs in samples.items():
        rows[service] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
            any(r[3] for r in runs),
        )
    base = rows.get("verifier")
    widths = {"ready s": 9, "RSS MiB": 9, "peak MiB": 10, "torch": 7, "ready/ver": 11, "RSS/ver": 9}
    print(f"{'front':<20}" + "".join(f"{name:>{width}}" for name, width in widths.items()))
    for service, (ready_s, rss, hwm, torch) in rows.items():
        ratios = f"{ready_s / base[0]:>11.2f}{rss / base[1]:>9.2f}" if base else ""
        print(f"{service:<20}{ready_s:>9.2f}{rss:>9.0f}{hwm:>10.0f}{'yes' if torch else 'no':>7}{ratios}")
    print(f"(median of {args.runs} starts each; python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
