"""The stack end to end over real HTTP, and the faults it must survive, each with its defined outcome.

Tests run in file order so that faults that are costly to heal (a worker replaced, the editor front killed)
come last; each test still stands alone (the ``stack`` fixture heals what an earlier one took down).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import EDITOR_QUEUE_MAX, PREFIX, REWARD_MODEL, VERIFIER_MODEL, Service, Stack, probe
from tests.editor.test_api import assert_error, png_b64
from tests.reward.conftest import png
from tests.support.redis_server import RedisServer
from tests.support.servers import wait_until
from tests.verifier.conftest import kind_of

pytestmark = pytest.mark.slow

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
STREAM = f"{PREFIX}:editor:jobs"


def ask(url: str, timeout: float = 120, **overrides: object) -> httpx.Response:
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "logic", **overrides}
    return httpx.post(f"{url}/answer", json=body, timeout=timeout)


def reward_body(edits: list[str], k: int = 2) -> dict[str, object]:
    item = {"id": "q1", "image": png((0, 0, 9)), "question": QUESTION, "answer": "B", "task": "logic"}
    return {"items": [{**item, "edits": edits}], "k": k}


def post_reward(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/reward", json=body, timeout=120)


def verifier_requests(stack: Stack, kind: str) -> list:
    return [r for r in stack.mllm.requests if r.model == VERIFIER_MODEL and kind_of(r) == kind]


def editor_jobs(stack: Stack) -> dict[str, dict[str, bytes]]:
    """Every editor job record in Redis, by job id."""
    client = stack.redis.client()
    try:
        records = {}
        for key in client.scan_iter(match=f"{PREFIX}:editor:job:*"):
            raw = client.hgetall(key)
            records[key.decode().rsplit(":", 1)[1]] = {k.decode(): v for k, v in raw.items()}
        return records
    finally:
        client.close()


def job_images(record: dict[str, bytes]) -> list[str]:
    return json.loads(record["result"])["images"] if "result" in record else []


def assert_answered_from_the_edit(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "B" and body["used_edit"] is True and body["fallback_reason"] is None, body
    return body


def assert_answered_without_the_edit(response: httpx.Response, reason: str) -> dict:
    """The answer still comes, from the original image (the speculative direct answer), saying why."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "A" and body["used_edit"] is False, body
    assert body["fallback_reason"].startswith(reason), body["fallback_reason"]
    return body


def metric(url: str, line: str) -> float:
    for row in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line!r}")


def terminate_all(services: list[Service]) -> None:
    for service in services:
        service.process.stop()


# --------------------------------------------------------------------------------------------- happy paths


def test_evr_answer_reasons_on_the_image_the_editor_made(stack: Stack) -> None:
    body = assert_answered_from_the_edit(ask(stack.verifier.url, return_images=True))
    assert body["verification"] == {"reliable": True, "raw": "1", "cause": "yes"} and body["task"] == "logic"

    # the MLLM saw the original and then exactly the image an editor worker stored for this edit
    (reason,) = verifier_requests(stack, "reason_edit")
    (judge,) = verifier_requests(stack, "judge")
    edited = reason.images[1].split(",", 1)[1]
    assert judge.images[1] == reason.images[1] and edited == body["edited_image"]
    (record,) = [r for r in editor_jobs(stack).values() if job_images(r) == [edited]]
    assert record["status"] == b"done"
    assert record["consumer"].decode().endswith(tuple(f"-{w.pid}" for w in stack.live_workers()))
    original = Image.open(io.BytesIO(base64.b64decode(reason.images[0].split(",", 1)[1])))
    produced = Image.open(io.BytesIO(base64.b64decode(edited)))
    assert produced.size == original.size == (80, 64) and produced.tobytes() != original.tobytes()


def test_reward_scores_the_editors_rollouts(stack: Stack) -> None:
    """RL step: n rollouts from the editor, scored by the reward service; every score known in advance."""
    rollouts = httpx.post(
        f"{stack.editor.url}/edit",
        json={"image": png_b64(64, 64), "question": QUESTION, "task": "logic", "n": 2, "seed": 11},
        timeout=120,
    )
    assert rollouts.status_code == 200, rollouts.text
    edits = rollouts.json()["images"]
    k = 4
    response = post_reward(stack.reward.url, reward_body(edits, k=k))
    assert response.status_code == 200, response.text
    (item,) = response.json()["items"]

    expected = []
    for edit in edits:  # the test MLLM answers from pixel (0, 0): red = U right, green = J says 1
        red, green, _ = Image.open(io.BytesIO(base64.b64decode(edit))).convert("RGB").getpixel((0, 0))
        guidance, correctness = min(red, k) / k, min(green, k) / k
        expected.append(
            {"guidance": guidance, "correctness": correctness, "reward": (guidance + correctness) / 2}
        )
    assert item["rewards"] == expected
    assert len(item["advantages"]) == len(item["win_rates"]) == 2
    reward_requests = [r for r in stack.mllm.requests if r.model == REWARD_MODEL]
    assert {r.n for r in reward_requests} == {k} and len(reward_requests) == 2 * len(set(edits))


def test_without_an_mllm_the_verifier_and_reward_say_what_to_set(stack: Stack) -> None:
    """ETCHR_MLLM_BASE_URL unset: not ready, and 503 naming it, in every mode — never a made-up answer."""
    # their own key prefix: the stack's reward workers (MLLM configured) must not answer these queries
    unset = {"ETCHR_MLLM_BASE_URL": "", "ETCHR_MLLM_MODEL": "", "ETCHR_REDIS_PREFIX": "e2e-no-mllm"}
    services = [stack.spawn_service("verifier", **unset), stack.spawn_service("reward", **unset)]
    try:
        for service in services:
            stack.wait_ready(service, "/healthz")
            ready = httpx.get(f"{service.url}/readyz", timeout=10)
            assert "ETCHR_MLLM_BASE_URL" in assert_error(ready, 503, "not_ready")["message"]
            assert "retry-after" not in ready.headers  # a configuration fix, not a wait
        verifier, reward = services
        for overrides in ({"mode": "evr"}, {"mode": "direct"}, {"mode": "evr", "task": "auto"}):
            response = ask(verifier.url, **overrides)
            error = assert_error(response, 503, "mllm_not_configured")
            assert "ETCHR_MLLM_BASE_URL" in error["message"] and "retry-after" not in response.headers
            assert response.headers["x-should-retry"] == "false"  # a configuration fix, not a wait (issue 17)
        response = post_reward(reward.url, reward_body([png((1, 1, 0))]))
        error = assert_error(response, 503, "mllm_not_configured")
        assert "ETCHR_MLLM_BASE_URL" in error["message"] and "retry-after" not in response.headers
        assert response.headers["x-should-retry"] == "false"
        assert stack.mllm.requests == []
        assert "never retrieved" not in verifier.log()  # the failed speculative answer is handled, not leaked
    finally:
        terminate_all(services)


def test_sigterm_lets_in_flight_answers_and_rewards_finish(stack: Stack) -> None:
    own = {"ETCHR_REDIS_PREFIX": "e2e-drain"}  # the queries must be answered by the worker being stopped
    services = [stack.spawn_service("verifier", **own), stack.spawn_service("reward", **own)]
    try:
        for service in services:
            stack.wait_ready(service)
        verifier, reward = services
        stack.mllm.latency_s = 1.0
        with ThreadPoolExecutor(2) as pool:
            answer = pool.submit(ask, verifier.url, mode="direct")
            scored = pool.submit(post_reward, reward.url, reward_body([png((2, 1, 0))]))
            wait_until(
                lambda: {r.model for r in stack.mllm.requests} == {VERIFIER_MODEL, REWARD_MODEL},
                30,
                "both services to be waiting on the MLLM",
            )
            for service in services:
                service.process.proc.send_signal(signal.SIGTERM)
            assert answer.result().status_code == 200 and answer.result().json()["answer"] == "A"
            assert scored.result().status_code == 200, scored.result().text
            assert scored.result().json()["items"][0]["rewards"][0]["reward"] == 0.75
        for service in services:
            # uvicorn re-raises the SIGTERM it handled once it has shut down: -SIGTERM is a clean exit
            assert service.process.proc.wait(timeout=60) in (0, -signal.SIGTERM), service.log()
            assert "Application shutdown complete" in service.log()
            assert probe(service.url, "/healthz") == 0
    finally:
        terminate_all(services)


# ----------------------------------------------------------------------------------------------- faults


def test_redis_killed_and_restarted_the_stack_recovers_without_restarts(stack: Stack) -> None:
    processes = {s.name: s.pid for s in (stack.editor, stack.verifier, stack.reward, *stack.live_workers())}
    stack.redis.stop()  # SIGKILL: no goodbye to the clients

    for service in (stack.editor, stack.reward):
        not_ready = assert_error(httpx.get(f"{service.url}/readyz", timeout=10), 503, "not_ready")
        assert "redis" in not_ready["message"].lower()
    refused = post_reward(stack.reward.url, reward_body([png((1, 1, 0))]))
    assert_error(refused, 503, "redis_unavailable")
    assert int(refused.headers["retry-after"]) > 0
    edit = httpx.post(
        f"{stack.editor.url}/edit", json={"image": png_b64(64, 64), "question": QUESTION, "task": "logic"}
    )
    assert_error(edit, 503, "redis_unavailable")
    # the verifier needs Redis only for its routing cache: it keeps answering, without the edit
    fallback = assert_answered_without_the_edit(ask(stack.verifier.url), "editor_down")
    assert "503" in fallback["fallback_reason"]
    assert probe(stack.verifier.url) == 200

    stack.redis.start()  # an empty Redis on the same port: streams, groups and caches are gone
    for service in (stack.editor, stack.reward):
        wait_until(lambda s=service: probe(s.url) == 200, 30, f"{service.name} ready again")
    assert_answered_from_the_edit(ask(stack.verifier.url))  # the worker found the new Redis by itself
    now = {s.name: s.pid for s in (stack.editor, stack.verifier, stack.reward, *stack.live_workers())}
    assert now == processes  # nothing of ours was restarted


def test_reward_requests_right_after_a_redis_restart_succeed(stack: Stack) -> None:
    """Readiness says 200 again, so requests must succeed — not 503, and not hang to the deadline.

    Guards ``connect_redis`` switching redis-py 8's maintenance notifications off: with them on, the pool
    hands out connections to the dead server unchecked, each pooled connection fails its first pipeline
    (pipelines are not retried), the API answers 503, or the worker fails to store a computed query and
    leaves it pending for ETCHR_QUEUE_RECLAIM_S, so the request ends in a 504.
    """
    own = RedisServer().start()  # its own Redis and prefix: the stack's other services keep theirs
    # the default reclaim time (the stack's 1 s would re-deliver an abandoned query and hide the loss)
    reward = stack.spawn_service(
        "reward", ETCHR_REDIS_URL=own.url, ETCHR_REWARD_DEADLINE_S="5", ETCHR_QUEUE_RECLAIM_S="600"
    )
    try:
        stack.wait_ready(reward)
        # a group of 4 edits: 8 queries in flight at once, so the pool holds several connections
        warm = post_reward(reward.url, reward_body([png((g, 1, 0)) for g in range(4)]))
        assert warm.status_code == 200, warm.text
        own.stop()
        own.start()
        wait_until(lambda: probe(reward.url) == 200, 30, "reward ready again")
        after = post_reward(reward.url, reward_body([png((g, 2, 0)) for g in range(4)]))
        assert after.status_code == 200, after.text
        assert [r["correctness"] for r in after.json()["items"][0]["rewards"]] == [1.0] * 4
    finally:
        reward.process.stop()
        own.stop()


def test_mllm_down_is_503_naming_it_then_recovers(stack: Stack) -> None:
    url = stack.mllm.base_url
    stack.take_mllm_down()
    for mode in ("evr", "direct"):
        response = ask(stack.verifier.url, mode=mode)
        error = assert_error(response, 503, "mllm_unavailable")
        assert url in error["message"] and int(response.headers["retry-after"]) > 0
    response = post_reward(stack.reward.url, reward_body([png((1, 1, 0))]))
    error = assert_error(response, 503, "mllm_unavailable")
    assert url in error["message"] and int(response.headers["retry-after"]) > 0
    assert probe(stack.editor.url) == 200  # the editor does not depend on it
    assert "never retrieved" not in stack.verifier.log()

    stack.bring_mllm_back()  # same URL; the services were not touched
    assert_answered_from_the_edit(ask(stack.verifier.url))
    recovered = post_reward(stack.reward.url, reward_body([png((1, 1, 0))]))  # the failure was not cached
    assert recovered.status_code == 200, recovered.text


def test_worker_sigkilled_mid_batch_while_the_verifier_waits(stack: Stack) -> None:
    """The job is re-delivered to another worker, completed once, and the verifier's answer uses it."""
    (first,) = stack.live_workers()
    before = set(editor_jobs(stack))
    with ThreadPoolExecutor(1) as pool:
        # a large image, so the denoising the worker is killed in takes a while even on a fast CPU
        answer = pool.submit(ask, stack.verifier.url, timeout=300, image=png_b64(768, 576))

        def running_job() -> str | None:
            new = {i: r for i, r in editor_jobs(stack).items() if i not in before}
            return next((i for i, r in new.items() if r.get("status") == b"running"), None)

        wait_until(lambda: running_job() is not None, 120, "the worker to start the edit", interval=0.01)
        job_id = running_job()
        os.kill(first.pid, signal.SIGKILL)
        first.process.proc.wait(timeout=10)
        assert editor_jobs(stack)[job_id]["status"] == b"running", "killed too late: the edit had finished"

        second = stack.spawn_worker()
        assert_answered_from_the_edit(answer.result(timeout=300))

    record = editor_jobs(stack)[job_id]
    assert record["status"] == b"done" and record["consumer"].decode().endswith(f"-{second.pid}")
    client = stack.redis.client()
    try:
        assert client.llen(f"{PREFIX}:editor:done:{job_id}") == 1  # the result was stored once
        assert client.xlen(STREAM) == 0 and client.xpending(STREAM, "workers")["pending"] == 0
        assert client.xlen(f"{PREFIX}:editor:dead") == 0
    finally:
        client.close()
    assert metric(second.metrics_url, 'etchr_editor_jobs_total{outcome="done"}') == 1.0
    (reason,) = verifier_requests(stack, "reason_edit")
    assert reason.images[1].split(",", 1)[1] == job_images(record)[0]


def test_queue_full_is_429_with_retry_after_and_the_verifier_answers_without_the_edit(stack: Stack) -> None:
    stack.pause_workers()  # a stalled GPU worker: edits pile up
    body = {"image": png_b64(64, 64), "question": QUESTION, "task": "logic"}
    accepted = [
        httpx.post(f"{stack.editor.url}/jobs", json=body, timeout=30) for _ in range(EDITOR_QUEUE_MAX)
    ]
    assert [r.status_code for r in accepted] == [202] * EDITOR_QUEUE_MAX
    full = httpx.post(f"{stack.editor.url}/edit", json=body, timeout=30)
    assert_error(full, 429, "queue_full")
    assert int(full.headers["retry-after"]) > 0
    fallback = assert_answered_without_the_edit(ask(stack.verifier.url), "editor_busy")
    assert "429" in fallback["fallback_reason"]

    stack.resume_workers()  # accepted jobs are not lost: they finish once the worker is back
    for job_id in (r.json()["id"] for r in accepted):
        wait_until(
            lambda j=job_id: httpx.get(f"{stack.editor.url}/jobs/{j}").json()["status"] == "done", 60, "job"
        )
    assert_answered_from_the_edit(ask(stack.verifier.url))


def test_editor_down_while_the_verifier_waits_it_answers_without_the_edit(stack: Stack) -> None:
    stack.pause_workers()  # the edit stays queued, so the verifier is still waiting when the editor dies
    client = stack.redis.client()
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(ask, stack.verifier.url)
            wait_until(lambda: client.xlen(STREAM) == 1, 30, "the edit to be queued")
            stack.editor.process.kill()
            assert_answered_without_the_edit(answer.result(timeout=60), "editor_down")
        assert_answered_without_the_edit(ask(stack.verifier.url), "editor_down")  # and afterwards
        assert probe(stack.verifier.url) == 200  # the editor is optional to the verifier: it stays ready

        stack.resume_workers()  # the orphaned job still completes (nobody waits; nothing is stuck)
        wait_until(lambda: client.xlen(STREAM) == 0, 60, "the orphaned edit to be processed")
    finally:
        client.close()
