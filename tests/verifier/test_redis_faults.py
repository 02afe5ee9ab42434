"""The verifier while the editor's Redis refuses writes: the editor's 503 is a fallback named as such."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from etchr.settings import EditorSettings, VerifierSettings
from etchr_editor.service import create_app as create_editor_app
from etchr_verifier.api import create_app as create_verifier_app
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_memory import fill_until_oom
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, UvicornThread, mllm_wiring
from tests.verifier.conftest import requests_of

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"


@pytest.fixture
def full_editor() -> Iterator[str]:
    """An editor front (no worker: nothing is ever accepted) whose own Redis is at maxmemory."""
    own_redis = RedisServer().start()
    server = UvicornThread(
        create_editor_app(EditorSettings(redis_url=own_redis.url, redis_prefix="full", editor_worker=False))
    ).start()
    fill_until_oom(own_redis)
    yield server.url
    server.stop()
    own_redis.stop()


def test_editor_refusing_for_redis_memory_is_a_named_fallback(
    full_editor: str, redis_server: RedisServer, key_prefix: str, mllm: ScriptedMLLM
) -> None:
    launcher = AppLauncher(
        create_verifier_app,
        VerifierSettings,
        {
            **mllm_wiring(redis_server.url, key_prefix, mllm.base_url),
            "editor_url": full_editor,
        },
    )
    try:
        buffer = io.BytesIO()
        Image.new("RGB", (80, 64), (200, 30, 30)).save(buffer, format="PNG")
        body = {"image": base64.b64encode(buffer.getvalue()).decode(), "question": QUESTION, "task": "logic"}
        response = httpx.post(f"{launcher.launch()}/answer", json=body, timeout=60)
    finally:
        launcher.stop_all()
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["answer"] == "A" and answer["used_edit"] is False
    reason = answer["fallback_reason"]
    assert reason.startswith("editor_down: ") and "unavailable" in reason and "503" in reason, reason
    assert "memory" in reason, reason  # the editor's own message says why
    assert requests_of(mllm, "judge") == []
