"""The editor while Redis refuses writes (maxmemory, noeviction): 503 + Retry-After, not ready, then recovery.

Each test starts its own redis-server and fills it; the session Redis other tests share is never touched.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from etchr.settings import EditorSettings
from etchr_editor.service import create_app
from tests.support.redis_memory import assert_redis_refused, fill_until_oom, lift_maxmemory
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread, wait_until

QUESTION = "Which exit of the maze does the path from the green dot reach? Options: A, B, C."


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (72, 50), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def edit_body() -> dict[str, object]:
    return {"image": base64.b64encode(png_bytes()).decode(), "question": QUESTION, "task": "logic", "seed": 7}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def editor(own_redis: RedisServer, key_prefix: str, tiny_editor_dir: Path) -> Iterator[str]:
    """The editor with its in-process worker on the tiny checkpoint, on a Redis of its own."""
    settings = EditorSettings(
        redis_url=own_redis.url,
        redis_prefix=key_prefix,
        editor_model=str(tiny_editor_dir),
        editor_device="cpu",
        editor_steps=2,
        editor_deadline_s=60,
    )
    server = UvicornThread(create_app(settings)).start()
    yield server.url
    server.stop()


def test_redis_out_of_memory_gives_503_not_ready_and_recovers(editor: str, own_redis: RedisServer) -> None:
    with httpx.Client(base_url=editor, timeout=60) as http:
        before = http.post("/edit", json=edit_body())
        assert before.status_code == 200, before.text

        fill_until_oom(own_redis)
        assert_redis_refused(http.post("/jobs", json=edit_body()))
        assert_redis_refused(http.post("/edit", json=edit_body()))
        files = {"image": ("maze.png", png_bytes(), "image/png")}
        assert_redis_refused(http.post("/v1/images/edits", data={"prompt": QUESTION}, files=files))
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503, not_ready.text
        assert "retry-after" not in not_ready.headers  # probes poll on their own schedule
        assert not_ready.json()["error"]["type"] == "not_ready"
        assert "memory" in not_ready.json()["error"]["message"]
        assert http.get("/healthz").status_code == 200
        # Reads still work: a finished job stays pollable while nothing new can be accepted.
        assert http.get(f"/jobs/{before.json()['id']}").json()["status"] == "done"

        lift_maxmemory(own_redis)
        wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness after Redis had room")
        assert http.post("/jobs", json=edit_body()).status_code == 202
        after = http.post("/edit", json=edit_body())
        assert after.status_code == 200, after.text
        assert len(after.json()["images"]) == 1


def test_a_worker_that_meets_a_full_redis_waits_and_then_finishes_the_job(
    own_redis: RedisServer, key_prefix: str, tiny_editor_dir: Path
) -> None:
    """The in-process worker takes a job while Redis refuses writes: it must wait, not die."""
    common = {"redis_url": own_redis.url, "redis_prefix": key_prefix, "queue_reclaim_s": 1.0}
    front = UvicornThread(create_app(EditorSettings(**common, editor_worker=False))).start()
    worker = None
    try:
        with httpx.Client(base_url=front.url, timeout=60) as http:
            accepted = http.post("/jobs", json=edit_body())
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["id"]
            fill_until_oom(own_redis)
            worker_settings = EditorSettings(
                **common, editor_model=str(tiny_editor_dir), editor_device="cpu", editor_steps=2
            )
            worker = UvicornThread(create_app(worker_settings)).start(wait_ready=False)
            redis_client = own_redis.client()
            try:  # the worker has taken the job (it is pending) but cannot mark it running
                wait_until(
                    lambda: redis_client.xpending(f"{key_prefix}:editor:jobs", "workers")["pending"] == 1,
                    60,
                    "the worker to take the job",
                )
            finally:
                redis_client.close()
            time.sleep(1.5)  # a few refused attempts
            assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"

            lift_maxmemory(own_redis)
            finished = lambda: http.get(f"/jobs/{job_id}").json()["status"] == "done"  # noqa: E731
            wait_until(finished, 60, "the job to finish")
    finally:
        front.stop()
        if worker is not None:
            worker.stop()
