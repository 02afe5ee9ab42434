"""Secrets never leave the process: not in its logs (at debug level), not in /metrics, not in responses.

Each service runs as a real ``etchr serve`` subprocess with distinctive values for every secret it holds,
is exercised with good and bad tokens, a successful MLLM call (the test MLLM confirms the key was really
sent, so the secret was in use) and MLLM failures, then is stopped so its log is complete.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from etchr.tasks import JUDGE_REPLY_CONVENTION
from tests.security.conftest import API_KEY, Service, png_b64
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import EtchrProcess, wait_until

# Distinctive, so a partial leak (a prefix, a suffix) would still be found.
SERVICE_KEY = "svc-KEY-7f3a9c1e5b2d4f60a8e1"
OTHER_SERVICE_KEY = "svc-OTHER-2b8e6d4c0a9f7e1d3c5b"
MLLM_KEY = "mllm-SECRET-c4e2a0f8d6b4e2c0a9e7"
JUDGE_KEY = "judge-SECRET-91d7f5b3a1e9c7d5b3a1"
NEAR_MISS = SERVICE_KEY[:-1] + "X"  # a wrong token a client sent: not to be echoed either
SECRETS = (SERVICE_KEY, OTHER_SERVICE_KEY, MLLM_KEY, JUDGE_KEY, NEAR_MISS, API_KEY)


def fragments(secret: str) -> list[str]:
    """The secret, its base64 (as in a Basic header) and its distinctive middle part."""
    return [secret, base64.b64encode(secret.encode()).decode(), secret[4:-4]]


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        for fragment in fragments(secret):
            assert fragment not in text, f"{fragment!r} found in {where}"


def judge_or_answer(request: object) -> str:
    text = getattr(request, "text", "")
    return "1" if JUDGE_REPLY_CONVENTION in text else "The exit is B.\n\\boxed{B}"


@pytest.fixture
def secrets_mllm() -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(judge_or_answer).start()
    yield server
    server.stop()


def start(service: str, env: dict[str, str], log: Path) -> tuple[EtchrProcess, str]:
    port = free_port()
    process = EtchrProcess(
        ["serve", service, "--host", "127.0.0.1", "--port", str(port), "--log-level", "debug"], env, log
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.proc.poll() is None, process.log()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, f"etchr serve {service}")
    return process, url


def exercise(
    url: str, path: str, make_body: Callable[[int], dict[str, object]], mllm: ScriptedMLLM
) -> tuple[list[httpx.Response], set[str | None]]:
    """Bad tokens, a good call, a backend that rejects us (401) and one that is down (503).

    Returns the responses and the Authorization headers the MLLM saw on the good call. Each call that
    should reach the MLLM gets a body of its own (``make_body(i)``), so no cached result answers it.
    """
    body = make_body(0)
    responses = []
    with httpx.Client(base_url=url, timeout=60) as client:
        good = {"authorization": f"Bearer {SERVICE_KEY}"}
        for headers in (
            {},
            {"authorization": f"Bearer {NEAR_MISS}"},
            {"authorization": f"Basic {base64.b64encode(SERVICE_KEY.encode()).decode()}"},
        ):
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == 401
            responses.append(response)
        ok = client.post(path, json=body, headers=good)
        assert ok.status_code == 200, ok.text
        responses.append(ok)
        sent = {request.headers.get("authorization") for request in mllm.requests}
        mllm.fail_next(50, status=401)  # the backend refuses our key: a 502 naming the backend
        rejected = client.post(
            path, json=make_body(1), headers={"authorization": f"Bearer {OTHER_SERVICE_KEY}"}
        )
        assert rejected.status_code == 502, rejected.text
        responses.append(rejected)
        mllm.reset()
        mllm.fail_next(50, status=503)
        down = client.post(path, json=make_body(2), headers=good)
        assert down.status_code == 503, down.text
        responses.append(down)
        mllm.reset()
        for probe in ("/metrics", "/readyz", "/healthz"):
            responses.append(client.get(probe))
        for viewer in ("/openapi.json", "/docs"):
            responses.append(client.get(viewer, headers=good))
        responses.append(client.get("/no-such-route", headers=good))
    return responses, sent


@pytest.mark.parametrize("service", ["verifier", "reward"])
def test_secrets_are_never_logged_or_returned(
    service: str,
    redis_server: RedisServer,
    editor_service: Service,
    secrets_mllm: ScriptedMLLM,
    tmp_path: Path,
) -> None:
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_REDIS_PREFIX": f"sec-secrets-{service}",
        "ETCHR_API_KEYS": f"{SERVICE_KEY},{OTHER_SERVICE_KEY}",
        "ETCHR_MLLM_BASE_URL": secrets_mllm.base_url,
        "ETCHR_MLLM_MODEL": "test-vlm",
        "ETCHR_MLLM_API_KEY": MLLM_KEY,
        "ETCHR_JUDGE_API_KEY": JUDGE_KEY,
        "ETCHR_MLLM_MAX_RETRIES": "0",
        "ETCHR_EDITOR_URL": editor_service.url,
        "ETCHR_EDITOR_API_KEY": API_KEY,
        "ETCHR_REWARD_DEADLINE_S": "30",
    }

    def make_body(i: int) -> dict[str, object]:
        image = png_b64(colour=(i, 100, 100))
        if service == "verifier":
            return {"image": image, "question": "Which exit?", "task": "logic"}
        item = {"id": "q", "image": image, "question": "Which exit?", "answer": "B", "edits": [image]}
        return {"items": [item], "k": 1}

    path = "/answer" if service == "verifier" else "/reward"
    process, url = start(service, env, tmp_path / f"{service}.log")
    try:
        responses, sent = exercise(url, path, make_body, secrets_mllm)
        # uvicorn re-raises the SIGTERM it handled after a clean shutdown
        assert process.terminate(timeout=60) in (0, -signal.SIGTERM), process.log()
    finally:
        process.stop()

    # The secrets were really in use: U and J got their own keys.
    assert f"Bearer {MLLM_KEY}" in sent and f"Bearer {JUDGE_KEY}" in sent
    for response in responses:
        assert_no_secret(response.text, f"{response.request.method} {response.request.url.path} body")
        assert_no_secret(str(response.headers), f"{response.request.url.path} headers")
    log = process.log()
    assert f"POST {path}" in log and "401" in log  # the log did capture the traffic
    assert_no_secret(log, f"the {service} log")
