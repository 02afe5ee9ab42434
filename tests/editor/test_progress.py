"""Live progress of edits over real HTTP and a real Redis: GET /jobs/{id}, its SSE stream, cancelling, and
the verifier's EditorClient following a job.

The worker serves its own copy of the tiny checkpoint whose transformer sleeps a little per forward (one
forward per denoising step), so a job runs long enough to be watched while queued and step by step.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from etchr.clients.editor import EditorClient, EditorUnavailable
from etchr.protocol.edit import EditProgress
from etchr.settings import EditorSettings
from etchr_editor.jobs import editor_queue
from tests.editor.test_api import QUESTION, editor_settings, png_b64
from tests.support.redis_server import RedisServer, free_port
from tests.support.slow_editor import start_slow_editor

STEPS = 6
STEP_DELAY_S = 0.12  # per transformer forward: a 6-step edit takes about 0.7 s
PREFIX = "progress"


@pytest.fixture(scope="module")
def settings(redis_server: RedisServer, tiny_editor_dir: Path) -> EditorSettings:
    return editor_settings(redis_server.url, PREFIX, tiny_editor_dir, editor_steps=STEPS, editor_max_batch=1)


@pytest.fixture(scope="module")
def editor(settings: EditorSettings, tiny_editor_dir: Path) -> Iterator[str]:
    """A front hosting one worker (one job at a time) on a slowed copy of the tiny checkpoint."""
    server = start_slow_editor(settings, tiny_editor_dir, STEP_DELAY_S)
    yield server.url
    server.stop()


@pytest.fixture
async def client(editor: str) -> Any:
    async with httpx.AsyncClient(base_url=editor, timeout=60) as http:
        yield http


def body(seed: int = 3, **overrides: object) -> dict[str, object]:
    return {"image": png_b64(64, 64), "question": QUESTION, "task": "logic", "seed": seed, **overrides}


async def submit(client: httpx.AsyncClient, **overrides: object) -> str:
    response = await client.post("/jobs", json=body(**overrides))
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def follow(
    client: httpx.AsyncClient, job_id: str, *, first: asyncio.Event | None = None, **params: str
) -> list[EditProgress]:
    """Every event of the job's stream, read to its end; ``first`` is set once the first one arrived."""
    events = []
    async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events", params=params) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for event in source.aiter_sse():
            events.append(EditProgress.model_validate_json(event.data))
            if first is not None:
                first.set()
    return events


async def wait_status(client: httpx.AsyncClient, job_id: str, *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in states:
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} never reached {states}")


def assert_running_then_done(events: list[EditProgress]) -> None:
    """Running steps only grow, the stream ends with one done event, which says N of N."""
    running = [event for event in events if event.status == "running"]
    steps = [event.step for event in running if event.step is not None]
    assert steps == sorted(steps) and len(set(steps)) >= 2 and max(steps) < STEPS + 1, events
    assert all(event.steps == STEPS for event in running if event.step is not None)
    assert events[-1] == EditProgress(status="done", step=STEPS, steps=STEPS), events
    assert sum(event.status == "done" for event in events) == 1


async def test_a_job_streams_queue_position_then_steps_then_done(client: httpx.AsyncClient) -> None:
    first = await submit(client)
    second = await submit(client, seed=4)
    third = await submit(client, seed=5)
    events = await follow(client, third)
    statuses = [event.status for event in events]
    assert statuses[0] == "queued"
    # queued..., running..., done: in that order, never back
    order = {"queued": 0, "running": 1, "done": 2}
    assert [order[s] for s in statuses] == sorted(order[s] for s in statuses), statuses
    positions = [event.queue_position for event in events if event.status == "queued"]
    assert positions[0] >= 1 and positions == sorted(positions, reverse=True) and 0 in positions, positions
    assert_running_then_done(events)
    for job_id in (first, second, third):
        job = (await client.get(f"/jobs/{job_id}")).json()
        assert job["progress"] == {"status": "done", "step": STEPS, "steps": STEPS}
        assert len(job["result"]["images"]) == 1


async def test_get_job_shows_the_step_while_running(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    job = await wait_status(client, job_id, "running")
    seen = set()
    while job["status"] == "running":
        progress = job["progress"]
        assert progress["status"] == "running" and "queue_position" not in progress
        if "step" in progress:
            assert 0 <= progress["step"] <= STEPS and progress["steps"] == STEPS
            seen.add(progress["step"])
        await asyncio.sleep(0.03)
        job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "done"
    assert len(seen) >= 2, seen


async def test_a_failed_job_stream_ends_with_failed(
    client: httpx.AsyncClient, settings: EditorSettings
) -> None:
    """A job a worker cannot read (a front of another version wrote it) fails; its stream says so."""
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        await editor_queue(redis, settings).enqueue(
            "garbled-job", {"job": "{}", "pixels": b""}, max_depth=100
        )
    finally:
        await redis.aclose()
    events = await follow(client, "garbled-job")
    assert events[-1].status == "failed" and not events[-1].cancelled
    job = (await client.get("/jobs/garbled-job")).json()
    assert job["status"] == "failed" and "malformed job" in job["error"]


async def test_unknown_jobs_are_404_on_every_job_route(client: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/jobs/nope"), ("GET", "/jobs/nope/events"), ("DELETE", "/jobs/nope")]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["type"] == "not_found"
    bad_token = await client.delete("/jobs/nope", params={"waiter": "no spaces allowed"})
    assert bad_token.status_code == 422 and bad_token.json()["error"]["param"].endswith("waiter")


async def test_a_cancelled_queued_job_is_never_run(
    client: httpx.AsyncClient, settings: EditorSettings
) -> None:
    ahead = await submit(client)
    victim = await submit(client, seed=9)
    response = await client.delete(f"/jobs/{victim}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": victim, "cancelled": True, "status": "failed", "detail": "cancelled"}
    assert (await follow(client, victim))[-1] == EditProgress(status="failed", cancelled=True)
    await wait_status(client, ahead, "done")
    behind = await submit(client, seed=10)  # the worker has read past the victim once this one is done
    await wait_status(client, behind, "done")
    job = (await client.get(f"/jobs/{victim}")).json()
    assert job["status"] == "failed" and "cancelled" in job["error"] and "result" not in job
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        queue = editor_queue(redis, settings)
        record = await queue.get(victim)
        assert record is not None and record.started_ms is None and record.consumer is None
        assert await redis.get(queue.progress_key(victim)) is None  # no step was ever published
    finally:
        await redis.aclose()
    again = (await client.delete(f"/jobs/{victim}")).json()
    assert again["cancelled"] is False and again["detail"] == "already cancelled"


async def test_a_cancelled_running_job_drops_its_result(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    await wait_status(client, job_id, "running")
    cancelled = (await client.delete(f"/jobs/{job_id}")).json()
    assert cancelled["cancelled"] is True
    after = await submit(client, seed=11)
    await wait_status(client, after, "done")  # the cancelled job's batch has ended by now
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "failed" and job["progress"]["cancelled"] is True and "result" not in job
    done = (await client.delete(f"/jobs/{after}")).json()
    assert done == {"id": after, "cancelled": False, "status": "done", "detail": "already done"}


async def test_a_cancel_with_a_waiter_token_spares_a_job_others_follow(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    following = asyncio.Event()
    other = asyncio.create_task(follow(client, job_id, first=following, waiter="other-follower"))
    await asyncio.wait_for(following.wait(), 30)
    mine = (await client.delete(f"/jobs/{job_id}", params={"waiter": "me"})).json()
    assert mine["cancelled"] is False and "another follower" in mine["detail"]
    events = await other
    assert events[-1].status == "done"  # the other follower got its edit
    # Once nobody follows, the same kind of cancel goes through.
    lonely = await submit(client, seed=12)
    waiting = (await client.delete(f"/jobs/{lonely}", params={"waiter": "me"})).json()
    assert waiting["cancelled"] is True


async def test_editor_client_with_progress_returns_the_same_image(editor: str) -> None:
    client = EditorClient(editor, timeout_s=60)
    image = png_b64(64, 64)
    try:
        plain = await client.edit(image, QUESTION, "logic", request_id="plain", seed=21)
        heard: list[EditProgress] = []
        followed = await client.edit(
            image, QUESTION, "logic", request_id="followed", seed=21, on_progress=heard.append
        )
    finally:
        await client.aclose()
    assert followed == plain and followed.startswith(b"\x89PNG")
    assert_running_then_done(heard)


async def test_editor_client_cancelled_mid_edit_cancels_the_job(
    editor: str, client: httpx.AsyncClient, settings: EditorSettings
) -> None:
    """The verifier's own client went away: its edit is cancelled, not left to run for nobody."""
    editor_client = EditorClient(editor, timeout_s=60)
    running = asyncio.Event()

    def on_progress(progress: EditProgress) -> None:
        if progress.status == "running":
            running.set()

    question = "Which door does the robot leave by? (asked by a client that then went away)"
    task = asyncio.create_task(
        editor_client.edit(png_b64(64, 64), question, "logic", request_id="gone", on_progress=on_progress)
    )
    await asyncio.wait_for(running.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await editor_client.aclose()  # waits for the DELETE it sent on the way out
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        queue = editor_queue(redis, settings)
        ids = [key.decode().rsplit(":", 1)[1] async for key in redis.scan_iter(f"{queue.name}:job:*")]
        records = [await queue.get(job_id) for job_id in ids]
    finally:
        await redis.aclose()
    [record] = [r for r in records if r is not None and r.meta.get("prompt", "").endswith(question)]
    assert record.cancelled and record.started_ms is not None, "the running edit was not cancelled"


async def test_editor_client_failures_keep_their_kinds_with_progress(editor: str) -> None:
    down = EditorClient(f"http://127.0.0.1:{free_port()}", timeout_s=5)
    with pytest.raises(EditorUnavailable) as refused:
        await down.edit(png_b64(64, 64), QUESTION, "logic", request_id="down", on_progress=lambda _: None)
    assert refused.value.kind == "editor_down"
    await down.aclose()
    live = EditorClient(editor, timeout_s=60)
    bad_image = base64.b64encode(b"not an image").decode()
    with pytest.raises(EditorUnavailable) as rejected:
        await live.edit(bad_image, QUESTION, "logic", request_id="bad", on_progress=lambda _: None)
    assert rejected.value.kind == "editor_error" and "400" in str(rejected.value)
    await live.aclose()
    slow = EditorClient(editor, timeout_s=0.3)  # a 6-step edit takes longer than that
    with pytest.raises(EditorUnavailable) as late:
        await slow.edit(png_b64(64, 64), QUESTION, "logic", request_id="late", on_progress=lambda _: None)
    assert late.value.kind == "editor_timeout"
    await slow.aclose()


def test_sampler_reports_each_request_step_by_step_across_chunks(tiny_editor: Any) -> None:
    """Two requests over chunks of two rows (3 + 1 rollouts): each request's count only grows, reaches N
    exactly when its last row is denoised, and listening changes no pixel."""
    from PIL import Image

    from etchr_editor.sampler import BatchedSampler, SampleRequest

    sampler = BatchedSampler(tiny_editor.pipe, max_rows=2)
    image = Image.new("RGB", (64, 64), (90, 140, 30))
    requests = [
        SampleRequest(image, "box the mug", (1, 2, 3), 3, 2.0),
        SampleRequest(image, "box the cup", (4,), 3, 2.0),
    ]
    reports: list[list[int]] = []
    heard = sampler.sample(requests, on_step=reports.append)
    assert len(reports) == 2 * 3  # two chunks of three steps
    for index in range(2):
        counts = [report[index] for report in reports]
        assert counts == sorted(counts) and counts[-1] == 3
    # rows 1-2 of the first request run in chunk one; its third row and the second request in chunk two
    assert reports[2] == [2, 0] and reports[-1] == [3, 3]
    plain = sampler.sample(requests)
    assert [[im.tobytes() for im in out] for out in heard] == [[im.tobytes() for im in out] for out in plain]
