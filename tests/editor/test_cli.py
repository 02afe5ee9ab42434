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
        [sys.executable, "-m", "etchr.cli", "tiny-editor", str(out)],
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
    env = {"ETCHR_REDIS_URL": redis_server.url, "ETCHR_REDIS_PREFIX": key_prefix, "ETCHR_EDITOR_MODEL": ""}
    worker = EtchrProcess(["worker", "editor"], env, tmp_path / "log")
    try:
        assert worker.proc.wait(timeout=120) != 0
        assert "ETCHR_EDITOR_MODEL is not set" in worker.log()
    finally:
        worker.stop()
