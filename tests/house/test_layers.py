"""The house's rules that `lint-imports` cannot see: what a running front loads, and no import by string.

The layer contracts themselves are in pyproject.toml ([tool.importlinter]) and run by .ci/run.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ["shared", "services", "training", "tools"]
HEAVY = {"torch", "diffusers", "transformers", "peft", "accelerate"}

# Builds the editor front exactly as `etchr serve editor --no-worker` does, runs its lifespan, serves an edit
# request (Redis is absent, so it fails after the image is decoded), and lists the heavy modules loaded.
FRONT_PROBE = """
import base64, io, json, os, sys
from PIL import Image
os.environ["ETCHR_EDITOR_WORKER"] = "false"
from fastapi.testclient import TestClient
from etchr_tools.cli import Service, app_factory
app = app_factory(Service.editor)()
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    png = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(png, "PNG")
    body = {"image": base64.b64encode(png.getvalue()).decode(), "question": "where?", "task": "perception"}
    reply = client.post("/edit", json=body)
    status = reply.status_code
heavy = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
print(json.dumps({"status": status, "heavy": heavy, "worker": "etchr_editor.worker" in sys.modules}))
"""


def test_editor_front_loads_no_torch_in_a_fresh_process() -> None:
    env = dict(os.environ, ETCHR_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", ETCHR_LOG_LEVEL="warning")
    code = f"HEAVY = {sorted(HEAVY)!r}\n" + FRONT_PROBE
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 503  # decoded and validated, then Redis was unreachable: a real request path
    assert report["heavy"] == [] and report["worker"] is False


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
@pytest.mark.parametrize(("worker", "loads_torch"), [("--no-worker", False), ("--worker", True)])
def test_served_editor_maps_torch_only_with_a_worker(worker: str, loads_torch: bool, tmp_path: Path) -> None:
    """The process ops run: `etchr serve editor --no-worker` has no libtorch mapped once it answers; with
    the in-process worker (here without a model, so it is not ready) torch is there: the check can fail."""
    port = free_port()
    env = dict(
        os.environ,
        ETCHR_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        ETCHR_EDITOR_MODEL=str(tmp_path / "no-model"),
        ETCHR_EDITOR_WORKER_METRICS_PORT="0",
    )
    etchr = str(Path(sys.executable).with_name("etchr"))
    command = [etchr, "serve", "editor", worker, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the editor front did not answer /healthz within 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        if loads_torch:  # the worker imports torch in the background; give it time
            while "libtorch" not in _maps(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        assert ("libtorch" in _maps(proc.pid)) is loads_torch
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _string_imports(path: Path) -> list[str]:
    """Calls that import a module named by a string: importlib.import_module, __import__, and uvicorn
    "module:attr" app strings."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in {"import_module", "__import__"}:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
        for arg in node.args[:1]:
            if (
                name in {"run", "Config"}
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and ":" in arg.value
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} app string {arg.value!r}")
    return found


def test_no_module_is_imported_by_string() -> None:
    sources = [path for root in SOURCE_ROOTS for path in (REPO / root).rglob("*.py")]
    assert len(sources) > 50
    offenders = [hit for path in sources for hit in _string_imports(path)]
    assert offenders == []


def test_the_string_import_check_finds_one(tmp_path: Path) -> None:
    sample = REPO / "tests" / "house" / "_sample_string_import.py"
    sample.write_text('import importlib\nimportlib.import_module("etchr_editor.tiny")\n')
    try:
        assert _string_imports(sample) == ["tests/house/_sample_string_import.py:2 import_module"]
    finally:
        sample.unlink()
