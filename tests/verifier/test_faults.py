"""Verifier faults from the hostile round (issue 21), over real HTTP: malformed chat payloads, editor
credentials the editor refuses, and a hanging MLLM held to one deadline per request."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from etchr.settings import EditorSettings, VerifierSettings
from etchr_editor.service import create_app as create_editor_app
from etchr_verifier.api import create_app as create_verifier_app
from tests.editor.test_api import assert_error, png_b64
from tests.support.mllm_server import Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import UvicornThread, mllm_wiring, wait_until
from tests.verifier.conftest import Script, requests_of

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
EDITOR_TOKEN = "editor-token"
IMAGE_URL = f"data:image/png;base64,{png_b64(80, 64)}"

Launch = Callable[..., str]


@pytest.fixture
def launch(redis_server: RedisServer, key_prefix: str, mllm: ScriptedMLLM) -> Iterator[Launch]:
    """Verifier apps over real HTTP, not waited on for readiness (some are meant never to be ready).

    The default editor URL is a closed port: the verifier answers without edits, as it does when the editor
    is down."""
    servers: list[UvicornThread] = []

    def start(**overrides: Any) -> str:
        values = {
            **mllm_wiring(redis_server.url, key_prefix, mllm.base_url),
            "editor_url": f"http://127.0.0.1:{free_port()}",
            "max_image_pixels": 512 * 512,
            **overrides,
        }
        server = UvicornThread(create_verifier_app(VerifierSettings(**values))).start(wait_ready=False)
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def auth_editor(redis_server: RedisServer) -> Iterator[str]:
    """The real editor front with ETCHR_API_KEYS set and no worker: it authenticates, it never edits."""
    settings = EditorSettings(
        redis_url=redis_server.url,
        redis_prefix="faults-auth-editor",
        editor_worker=False,
        api_keys=[EDITOR_TOKEN],
        editor_deadline_s=2.0,  # an /edit the verifier gave up on ends soon after, so shutdown is quick
    )
    server = UvicornThread(create_editor_app(settings)).start()
    yield server.url
    server.stop()


def chat(url: str, body: Any, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def chat_body(*content: Any, model: str = "etchr-logic") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": list(content)}]}


TEXT = {"type": "text", "text": QUESTION}

# (body, the field the error must name): every wrong type is the schema's 422, never the handler's 500.
MALFORMED = {
    "url is an int": (
        chat_body(TEXT, {"type": "image_url", "image_url": {"url": 5}}),
        "messages.0.content.1.image_url.url",
    ),
    "url is an object": (
        chat_body(TEXT, {"type": "image_url", "image_url": {"url": {"url": IMAGE_URL}}}),
        "messages.0.content.1.image_url.url",
    ),
    "url is a list": (
        chat_body(TEXT, {"type": "image_url", "image_url": {"url": [IMAGE_URL]}}),
        "messages.0.content.1.image_url.url",
    ),
    "url is null": (
        chat_body(TEXT, {"type": "image_url", "image_url": {"url": None}}),
        "messages.0.content.1.image_url.url",
    ),
    "image_url is a bare string": (
        chat_body(TEXT, {"type": "image_url", "image_url": IMAGE_URL}),
        "messages.0.content.1.image_url",
    ),
    "image_url part without image_url": (chat_body(TEXT, {"type": "image_url"}), "messages.0.content.1"),
    "text part without text": (
        chat_body({"type": "text"}, {"type": "image_url", "image_url": {"url": IMAGE_URL}}),
        "messages.0.content.0",
    ),
    "part of an unknown type": (
        chat_body(TEXT, {"type": "video_url", "video_url": {"url": IMAGE_URL}}),
        "messages.0.content.1.type",
    ),
    "part is not an object": (chat_body(TEXT, IMAGE_URL), "messages.0.content.1"),
    "content is a number": (
        {"model": "etchr", "messages": [{"role": "user", "content": 5}]},
        "messages.0.content",
    ),
    "messages is an object": (
        {"model": "etchr", "messages": {"role": "user", "content": [TEXT]}},
        "messages",
    ),
    "messages holds strings": ({"model": "etchr", "messages": [QUESTION]}, "messages.0"),
}


@pytest.mark.parametrize(("body", "param"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chat_payloads_are_a_422_naming_the_field(
    launch: Launch, mllm: ScriptedMLLM, body: dict[str, Any], param: str
) -> None:
    response = chat(launch(), body)
    error = assert_error(response, 422, "validation_error")
    assert error["param"] == param, error
    assert param in error["message"]
    assert mllm.requests == [], "a malformed request costs no MLLM call"


def test_the_well_formed_chat_still_answers_and_value_errors_are_a_400(launch: Launch) -> None:
    """The same shapes with the right types go through: the 422s above are about the types alone."""
    url = launch()
    response = chat(url, chat_body(TEXT, {"type": "image_url", "image_url": {"url": IMAGE_URL}}))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == Script().direct_answer
    remote = chat(url, chat_body(TEXT, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}))
    assert assert_error(remote, 400, "invalid_field")["param"] == "messages.0.content.1.image_url.url"
    no_image = chat(url, {"model": "etchr", "messages": [{"role": "user", "content": QUESTION}]})
    error = assert_error(no_image, 400, "invalid_field")
    assert "no image in the conversation" in error["message"] and error["param"] == "messages"


# ------------------------------------------------------------------------------- editor credentials


def readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


@pytest.mark.parametrize(
    ("editor_api_key", "hint"),
    [
        (None, "set ETCHR_EDITOR_API_KEY"),
        ("not-the-editor-token", "ETCHR_EDITOR_API_KEY is not one of the editor's ETCHR_API_KEYS"),
    ],
)
def test_editor_refusing_the_token_makes_the_verifier_unready_and_says_why(
    launch: Launch, auth_editor: str, editor_api_key: str | None, hint: str
) -> None:
    url = launch(editor_url=auth_editor, editor_api_key=editor_api_key)
    error = assert_error(readyz(url), 503, "not_ready")
    assert "refused the verifier's credentials (401)" in error["message"] and hint in error["message"]

    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "logic"}
    answer = httpx.post(f"{url}/answer", json=body, timeout=30).json()
    assert answer["used_edit"] is False and answer["answer"] == "A"
    assert answer["fallback_reason"].startswith("editor_auth: ") and hint in answer["fallback_reason"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'etchr_verifier_fallbacks_total{reason="editor_auth"} 1.0' in metrics


def test_accepted_token_is_ready(launch: Launch, auth_editor: str) -> None:
    url = launch(editor_url=auth_editor, editor_api_key=EDITOR_TOKEN)
    assert readyz(url).status_code == 200


@pytest.fixture
def silent_editor() -> Iterator[str]:
    """A port that accepts connections and never answers: an editor hung before its first byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_editor_down_or_hung_keeps_the_verifier_ready(launch: Launch, silent_editor: str) -> None:
    """It answers without edits then, by design; the credentials probe gives up within about a second."""
    assert readyz(launch()).status_code == 200  # nothing listens on the editor port
    url = launch(editor_url=silent_editor)
    started = time.monotonic()
    assert readyz(url).status_code == 200
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------------- the deadline


def test_a_hanging_mllm_gets_a_504_at_the_deadline_and_its_calls_are_cancelled(
    launch: Launch, mllm: ScriptedMLLM
) -> None:
    # Each attempt times out after 0.4 s and the openai client retries it (after ~0.5 s, then ~1 s) up to
    # 5 times: about 6 s without a deadline, and a request every second or so while it lasts.
    mllm.responder = lambda request: Reply(content="It is A.\n\\boxed{A}", delay_s=60)
    url = launch(mllm_timeout_s=0.4, mllm_max_retries=5, verifier_deadline_s=1.0)
    wait_until(lambda: readyz(url).status_code == 200, 10, "the verifier to be ready")
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "none"}
    started = time.monotonic()
    response = httpx.post(f"{url}/answer", json=body, timeout=30)
    elapsed = time.monotonic() - started
    error = assert_error(response, 504, "deadline_exceeded")
    assert "ETCHR_VERIFIER_DEADLINE_S" in error["message"]
    assert 0.9 < elapsed < 3, elapsed
    asked = len(mllm.requests)
    assert 1 <= asked <= 2
    time.sleep(2.5)  # long enough for the next retry, were the request still running
    assert len(mllm.requests) == asked, "the MLLM calls were cancelled with the request"


def test_the_deadline_covers_the_edit_and_the_chat_facade(
    launch: Launch, mllm: ScriptedMLLM, auth_editor: str
) -> None:
    """evr with an editor that never finishes (no worker) and a hanging MLLM: 504 at the deadline, not after
    the 120 s edit timeout."""
    mllm.responder = lambda request: Reply(content="It is A.\n\\boxed{A}", delay_s=60)
    url = launch(editor_url=auth_editor, editor_api_key=EDITOR_TOKEN, verifier_deadline_s=1.0)
    started = time.monotonic()
    response = chat(url, chat_body(TEXT, {"type": "image_url", "image_url": {"url": IMAGE_URL}}))
    assert_error(response, 504, "deadline_exceeded")
    assert time.monotonic() - started < 3
    assert len(requests_of(mllm, "reason_direct")) == 1, "the speculative answer was asked for, then dropped"
