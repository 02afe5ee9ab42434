from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway Redis per test process (per xdist worker)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    """A unique Redis key prefix so tests sharing one server never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tiny_editor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-init Flux2Klein checkpoint (docs/tiny-editor.md) on disk, built once per test process.

    torch/diffusers are imported inside, so test files that never touch the model collect fast.
    """
    from etchr_editor.tiny import save_tiny_editor

    return save_tiny_editor(tmp_path_factory.mktemp("tiny-editor"))


@pytest.fixture(scope="session")
def fitted_editor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its VAE fitted, as ops get it: ``etchr tiny-editor DIR --fit-vae``.

    Fitting takes about a minute of CPU, so it is built once per test *run*: xdist workers share one copy in
    the run's common temp folder, the first builds it (into a side folder, renamed when complete) under a
    file lock, the others wait and reuse it.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, above the per-worker ones
    out = root / "tiny-editor-fitted"
    with FileLock(f"{out}.lock"):
        if not out.is_dir():
            partial = root / f"tiny-editor-fitted.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run(
                [sys.executable, "-m", "etchr_tools.cli", "tiny-editor", str(partial), "--fit-vae"],
                capture_output=True,
                text=True,
                timeout=400,
            )
            assert done.returncode == 0, done.stderr
            assert "fitted VAE" in done.stdout
            partial.rename(out)
    return out
