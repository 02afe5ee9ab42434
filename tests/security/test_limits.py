"""Input limits at the service level, on all three services: field lengths (422), body size (413), pixels
and decompression bombs (400) — each refused with the error body of docs/api.md before any model or MLLM call.

The editor's JSON ``/edit`` body, pixel and bomb cases live in tests/editor/test_api.py; the codec itself in
tests/shared/test_imaging.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from etchr.protocol import (
    MAX_CHAT_MESSAGES,
    MAX_CHAT_PARTS,
    MAX_CHAT_TEXT_CHARS,
    MAX_KEYWORD_CHARS,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
)
from tests.security.conftest import (
    AUTH,
    MAX_BODY_BYTES,
    Service,
    assert_error,
    bomb_png_bytes,
    png_b64,
    png_bytes,
)
from tests.support.mllm_server import ScriptedMLLM

QUESTION = "Which exit does the path reach?"
TOO_LONG_TEXT = "q" * (MAX_TEXT_CHARS + 1)
BOMB = base64.b64encode(bomb_png_bytes()).decode()
TOO_MANY_PIXELS = png_b64(300, 300)  # over 256² but far under the body limit


def edit_body(**overrides: object) -> dict[str, object]:
    return {"image": png_b64(), "question": QUESTION, "task": "logic", **overrides}


def answer_body(**overrides: object) -> dict[str, object]:
    return {"image": png_b64(), "question": QUESTION, "task": "logic", "mode": "direct", **overrides}


def chat_body(text: str = QUESTION, image_url: str | None = None, **overrides: object) -> dict[str, Any]:
    url = image_url or f"data:image/png;base64,{png_b64()}"
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "etchr-logic", "messages": [{"role": "user", "content": content}], **overrides}


def reward_item(**overrides: object) -> dict[str, object]:
    return {
        "id": "q1",
        "image": png_b64(),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [png_b64(colour=(1, 1, 0))],
        **overrides,
    }


def filter_item(**overrides: object) -> dict[str, object]:
    item = reward_item()
    item["edited_image"] = item.pop("edits")[0]  # type: ignore[index]
    return {**item, **overrides}


@pytest.fixture
def no_mllm_calls(security_mllm: ScriptedMLLM) -> Iterator[None]:
    """Every refusal here happens before the MLLM is asked anything."""
    before = len(security_mllm.requests)
    yield
    assert len(security_mllm.requests) == before


@pytest.fixture
def clients(services: dict[str, Service]) -> Iterator[dict[str, httpx.Client]]:
    opened = {name: httpx.Client(base_url=s.url, headers=AUTH, timeout=60) for name, s in services.items()}
    yield opened
    for client in opened.values():
        client.close()


# ------------------------------------------------------------------------------------------ field lengths

FIELD_CASES = [
    ("editor", "/edit", edit_body(question=TOO_LONG_TEXT)),
    ("editor", "/jobs", edit_body(question=TOO_LONG_TEXT)),
    ("verifier", "/answer", answer_body(question=TOO_LONG_TEXT)),
    ("verifier", "/v1/chat/completions", chat_body(model="m" * (MAX_NAME_CHARS + 1))),
    ("verifier", "/v1/chat/completions", chat_body(text="t" * (MAX_CHAT_TEXT_CHARS + 1))),
    (
        "verifier",
        "/v1/chat/completions",
        {"model": "etchr", "messages": [{"role": "r" * (MAX_KEYWORD_CHARS + 1), "content": "hi"}]},
    ),
    (
        "verifier",
        "/v1/chat/completions",
        {"model": "etchr", "messages": [{"role": "system", "content": "s" * (MAX_CHAT_TEXT_CHARS + 1)}]},
    ),
    (
        "verifier",
        "/v1/chat/completions",
        {"model": "etchr", "messages": [{"role": "user", "content": "hi"}] * (MAX_CHAT_MESSAGES + 1)},
    ),
    (
        "verifier",
        "/v1/chat/completions",
        {
            "model": "etchr",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_CHAT_PARTS + 1)}],
        },
    ),
    (
        "verifier",
        "/v1/chat/completions",
        {"model": "etchr", "messages": [{"role": "user", "content": [{"type": "t" * 65, "text": "a"}]}]},
    ),
    # Two text parts, each within its own limit, that make a question over MAX_TEXT_CHARS together.
    (
        "verifier",
        "/v1/chat/completions",
        {
            "model": "etchr",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a" * (MAX_TEXT_CHARS // 2 + 1)},
                        {"type": "text", "text": "b" * (MAX_TEXT_CHARS // 2 + 1)},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64()}"}},
                    ],
                }
            ],
        },
    ),
    ("reward", "/reward", {"items": [reward_item(id="i" * (MAX_NAME_CHARS + 1))]}),
    ("reward", "/reward", {"items": [reward_item(question=TOO_LONG_TEXT)]}),
    ("reward", "/reward", {"items": [reward_item(answer=TOO_LONG_TEXT)]}),
    ("reward", "/reward", {"items": [reward_item(scorer="s" * (MAX_KEYWORD_CHARS + 1))]}),
    ("reward", "/reward", {"items": [reward_item(edits=[png_b64()] * 65)]}),
    ("reward", "/filter", {"items": [filter_item(id="i" * (MAX_NAME_CHARS + 1))]}),
    ("reward", "/filter", {"items": [filter_item(question=TOO_LONG_TEXT)]}),
    ("reward", "/filter", {"items": [filter_item(answer=TOO_LONG_TEXT)]}),
    ("reward", "/filter", {"items": [filter_item(scorer="s" * (MAX_KEYWORD_CHARS + 1))]}),
]


@pytest.mark.usefixtures("no_mllm_calls")
@pytest.mark.parametrize(("name", "path", "body"), FIELD_CASES)
def test_over_long_fields_are_a_422(
    clients: dict[str, httpx.Client], name: str, path: str, body: dict[str, Any]
) -> None:
    assert_error(clients[name].post(path, json=body), 422, "validation_error")


def test_at_the_limit_is_accepted(clients: dict[str, httpx.Client]) -> None:
    """The bounds are where they say: a question of exactly MAX_TEXT_CHARS passes validation."""
    response = clients["editor"].post("/jobs", json=edit_body(question="q" * MAX_TEXT_CHARS))
    assert response.status_code == 202, response.text


@pytest.mark.usefixtures("no_mllm_calls")
@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": TOO_LONG_TEXT},
        {"prompt": QUESTION, "model": "m" * (MAX_NAME_CHARS + 1)},
        {"prompt": QUESTION, "size": "9" * (MAX_KEYWORD_CHARS + 1)},
        {"prompt": QUESTION, "response_format": "f" * (MAX_KEYWORD_CHARS + 1)},
    ],
)
def test_openai_images_form_fields_are_bounded(
    clients: dict[str, httpx.Client], fields: dict[str, str]
) -> None:
    files = {"image": ("maze.png", png_bytes(), "image/png")}
    assert_error(
        clients["editor"].post("/v1/images/edits", data=fields, files=files), 422, "validation_error"
    )


# ------------------------------------------------------------------------------------------- body size

BODY_CASES = [
    ("verifier", "/answer", lambda big: answer_body(image=big)),
    ("verifier", "/v1/chat/completions", lambda big: chat_body(image_url=f"data:image/png;base64,{big}")),
    ("reward", "/reward", lambda big: {"items": [reward_item(image=big)]}),
    ("reward", "/filter", lambda big: {"items": [filter_item(edited_image=big)]}),
]


@pytest.mark.usefixtures("no_mllm_calls")
@pytest.mark.parametrize(("name", "path", "make"), BODY_CASES)
def test_oversized_body_is_413(clients: dict[str, httpx.Client], name: str, path: str, make: Any) -> None:
    big = "A" * (MAX_BODY_BYTES + 1024)
    assert_error(clients[name].post(path, json=make(big)), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while the body streams in
        yield b'{"image": "'
        for _ in range(12):
            yield b"A" * 100_000
        yield b'"}'

    streamed = clients[name].post(path, content=chunks(), headers={"content-type": "application/json"})
    assert_error(streamed, 413, "request_too_large")


@pytest.mark.usefixtures("no_mllm_calls")
def test_oversized_multipart_upload_is_413(clients: dict[str, httpx.Client]) -> None:
    files = {"image": ("big.png", b"\x89PNG" + b"\0" * (MAX_BODY_BYTES + 1024), "image/png")}
    response = clients["editor"].post("/v1/images/edits", data={"prompt": QUESTION}, files=files)
    assert_error(response, 413, "request_too_large")


# ---------------------------------------------------------------------------- pixels and decompression bombs

IMAGE_CASES = [
    ("verifier", "/answer", lambda image: answer_body(image=image)),
    ("verifier", "/v1/chat/completions", lambda image: chat_body(image_url=f"data:image/png;base64,{image}")),
    ("reward", "/reward", lambda image: {"items": [reward_item(image=image)]}),
    ("reward", "/reward", lambda image: {"items": [reward_item(edits=[png_b64(), image])]}),
    ("reward", "/filter", lambda image: {"items": [filter_item(image=image)]}),
    ("reward", "/filter", lambda image: {"items": [filter_item(edited_image=image)]}),
]


@pytest.mark.usefixtures("no_mllm_calls")
@pytest.mark.parametrize("image", [BOMB, TOO_MANY_PIXELS], ids=["bomb", "too-many-pixels"])
@pytest.mark.parametrize(("name", "path", "make"), IMAGE_CASES)
def test_bombs_and_oversized_images_are_400(
    clients: dict[str, httpx.Client], name: str, path: str, make: Any, image: str
) -> None:
    error = assert_error(clients[name].post(path, json=make(image)), 400, "invalid_image")
    assert "pixels" in error["message"]


@pytest.mark.usefixtures("no_mllm_calls")
@pytest.mark.parametrize(
    "raw", [bomb_png_bytes(), base64.b64decode(TOO_MANY_PIXELS)], ids=["bomb", "too-many-pixels"]
)
def test_openai_images_upload_bombs_are_400(clients: dict[str, httpx.Client], raw: bytes) -> None:
    files = {"image": ("x.png", raw, "image/png")}
    response = clients["editor"].post("/v1/images/edits", data={"prompt": QUESTION}, files=files)
    error = assert_error(response, 400, "invalid_image")
    assert "pixels" in error["message"]
