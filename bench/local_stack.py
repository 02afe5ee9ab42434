"""A throwaway Redis + ``etchr serve editor`` subprocess for benchmarks (what a user runs, over real HTTP)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx

# The folders the project's packages live in: another checkout's, first on PYTHONPATH, runs its code
# (`--compare-tree` of the benches that measure a change side by side against an earlier commit).
PACKAGE_ROOTS = ("shared", "services/editor", "services/verifier", "services/reward", "training", "tools")


def with_tree(env: Mapping[str, str], tree: Path | None) -> dict[str, str]:
    """``env`` for a process that runs ``tree``'s code instead of this checkout's (None: this one)."""
    if tree is None:
        return dict(env)
    return {**env, "PYTHONPATH": os.pathsep.join(str(tree / root) for root in PACKAGE_ROOTS)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def edit_arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every serving benchmark shares: which model, where, and what one edit is."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Flux2KleinPipeline dir (default: build the tiny one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.5)
    return parser


@contextmanager
def service_stack(service: str, settings: Mapping[str, str]) -> Iterator[str]:
    """Yields the base URL of a ready ``etchr serve SERVICE`` backed by its own throwaway redis-server."""
    work = Path(tempfile.mkdtemp(prefix="etchr-bench-"))
    redis_port, port = free_port(), free_port()
    redis_args = ["--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(work)]
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", *redis_args], stdout=subprocess.DEVNULL
    )
    env = {**os.environ, "ETCHR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", **settings}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etchr_tools.cli",
            "serve",
            service,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        redis_proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def editor_stack(model: str, device: str, settings: Mapping[str, str] = {}) -> AbstractContextManager[str]:
    """The editor (in-process worker) on ``model``."""
    return service_stack("editor", {"ETCHR_EDITOR_MODEL": model, "ETCHR_EDITOR_DEVICE": device, **settings})
