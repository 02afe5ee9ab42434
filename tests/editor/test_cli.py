"""The `etchr` command as ops run it: tiny-editor writes a loadable checkpoint, serve editor answers edits."""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from diffusers import Flux2KleinPipeline
from PIL import Image

from tests.editor.test_api import edit_body
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import EtchrProcess, wait_until


def test_tiny_editor_command_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "etchr_tools.cli", "tiny-editor", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "model_index.json").is_file()
    pipe = Flux2KleinPipeline.from_pretrained(out)
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels


def test_serve_editor_answers_then_drains_on_sigterm(
    redis_server: RedisServer, key_prefix: str, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_REDIS_PREFIX": key_prefix,
        "ETCHR_EDITOR_MODEL": str(tiny_editor_dir),
        "ETCHR_EDITOR_DEVICE": "cpu",
        "ETCHR_EDITOR_STEPS": "2",
    }
    server = EtchrProcess(
        ["serve", "editor", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "log"
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 120, "etchr serve editor to become ready")
        response = httpx.post(f"{url}/edit", json=edit_body(), timeout=60)
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert image.size == (72, 50)
        # uvicorn drains, runs the lifespan shutdown (the worker finishes its batch), then re-raises SIGTERM
        assert server.terminate(timeout=60) in (0, -signal.SIGTERM), server.log()
        assert "Application shutdown complete" in server.log()
        assert "worker" in server.log() and "stopped" in server.log()
    finally:
        server.stop()


def test_worker_without_a_model_fails_loudly(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_REDIS_PREFIX": key_prefix,
        "ETCHR_EDITOR_MODEL": "",
        "ETCHR_EDITOR_WORKER_METRICS_PORT": "0",
    }
    worker = EtchrProcess(["worker", "editor"], env, tmp_path / "log")
    try:
        assert worker.proc.wait(timeout=120) != 0
        assert "ETCHR_EDITOR_MODEL is not set" in worker.log()
    finally:
        worker.stop()


def test_front_and_standalone_worker_split_as_on_kubernetes(
    redis_server: RedisServer, key_prefix: str, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    """`serve editor --no-worker` queues, `worker editor` edits; the worker's probe port says when it is
    ready (model loaded) and exports what it did."""
    front_port, probe_port = free_port(), free_port()
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_REDIS_PREFIX": key_prefix,
        "ETCHR_EDITOR_MODEL": str(tiny_editor_dir),
        "ETCHR_EDITOR_DEVICE": "cpu",
        "ETCHR_EDITOR_STEPS": "2",
        "ETCHR_EDITOR_WORKER_METRICS_PORT": str(probe_port),
    }
    front = EtchrProcess(
        ["serve", "editor", "--no-worker", "--host", "127.0.0.1", "--port", str(front_port)],
        env,
        tmp_path / "front",
    )
    worker = EtchrProcess(["worker", "editor"], env, tmp_path / "worker")
    probes, url = f"http://127.0.0.1:{probe_port}", f"http://127.0.0.1:{front_port}"

    def status(path: str) -> int | None:
        try:
            return httpx.get(path, timeout=2).status_code
        except httpx.HTTPError:
            return None

    try:
        wait_until(lambda: status(f"{probes}/readyz") == 200, 120, "the worker's /readyz")
        assert status(f"{probes}/healthz") == 200
        wait_until(lambda: status(f"{url}/readyz") == 200, 120, "the editor front")
        response = httpx.post(f"{url}/edit", json=edit_body(), timeout=60)
        assert response.status_code == 200, response.text
        exposition = httpx.get(f"{probes}/metrics", timeout=5).text
        assert 'etchr_editor_jobs_total{outcome="done"} 1.0' in exposition  # done here, not in the front
        assert "etchr_editor_queue_waiting 0.0" in exposition
        assert worker.terminate(timeout=60) == 0, worker.log()
    finally:
        worker.stop()
        front.stop()
