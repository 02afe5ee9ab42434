"""Real worker processes: SIGKILL mid-batch loses nothing, SIGTERM finishes the batch in hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from etchr_editor.service import create_app
from tests.editor.test_api import edit_body, editor_settings, png_b64
from tests.support.redis_server import RedisServer
from tests.support.servers import EtchrProcess, UvicornThread, wait_until

# Enough denoising steps that a job is still running when the test acts on the worker.
SLOW_STEPS = 60


@pytest.fixture
def front(redis_server: RedisServer, key_prefix: str) -> Iterator[UvicornThread]:
    settings = editor_settings(redis_server.url, key_prefix, None, editor_worker=False)
    server = UvicornThread(create_app(settings)).start()
    yield server
    server.stop()


def start_worker(redis_server: RedisServer, prefix: str, model: Path, log: Path) -> EtchrProcess:
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_REDIS_PREFIX": prefix,
        "ETCHR_EDITOR_MODEL": str(model),
        "ETCHR_EDITOR_DEVICE": "cpu",
        "ETCHR_EDITOR_STEPS": "2",
        "ETCHR_QUEUE_RECLAIM_S": "1",
        "ETCHR_EDITOR_WORKER_METRICS_PORT": "0",
    }
    return EtchrProcess(["worker", "editor", "--log-level", "info"], env, log)


def job_state(http: httpx.Client, job_id: str) -> str:
    return http.get(f"/jobs/{job_id}").json()["status"]


def test_worker_killed_mid_batch_its_job_completes_on_another_worker(
    front: UvicornThread, redis_server: RedisServer, key_prefix: str, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    first = start_worker(redis_server, key_prefix, tiny_editor_dir, tmp_path / "worker-a.log")
    second: EtchrProcess | None = None
    try:
        with httpx.Client(base_url=front.url, timeout=30) as http:
            body = edit_body(image=png_b64(96, 64), steps=SLOW_STEPS, n=2)
            job_id = http.post("/jobs", json=body).json()["id"]
            wait_until(lambda: job_state(http, job_id) == "running", 60, "worker A to start the job")
            first.kill()
            assert job_state(http, job_id) == "running"

            second = start_worker(redis_server, key_prefix, tiny_editor_dir, tmp_path / "worker-b.log")
            wait_until(
                lambda: job_state(http, job_id) == "done", 120, "worker B to finish the re-delivered job"
            )
            result = http.get(f"/jobs/{job_id}").json()["result"]
            assert len(result["images"]) == 2 and result["seeds"] == [7, 8]

            # nothing left pending or dead-lettered: the re-delivery was processed exactly once
            metrics = http.get("/metrics").text
            assert "etchr_editor_queue_waiting 0.0" in metrics and "etchr_editor_queue_running 0.0" in metrics
            assert redis_server.client().xlen(f"{key_prefix}:editor:dead") == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_sigterm_finishes_the_batch_in_hand_then_exits(
    front: UvicornThread, redis_server: RedisServer, key_prefix: str, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker(redis_server, key_prefix, tiny_editor_dir, tmp_path / "worker.log")
    try:
        with httpx.Client(base_url=front.url, timeout=30) as http:
            job_id = http.post("/jobs", json=edit_body(steps=SLOW_STEPS)).json()["id"]
            wait_until(lambda: job_state(http, job_id) == "running", 60, "the worker to start the job")
            assert worker.terminate(timeout=120) == 0, worker.log()
            assert job_state(http, job_id) == "done"
    finally:
        worker.stop()
