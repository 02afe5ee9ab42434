"""No server-side fetching: an http(s) URL where an image is expected is a 4xx, and nothing is fetched.

The URLs point at a real local HTTP server that serves a valid PNG and records every hit, so a service that
fetched (or handed the URL on to the MLLM, which might) would be caught, not merely fail to connect.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.security.conftest import AUTH, RecordingHTTPServer, Service, assert_error, png_b64
from tests.support.mllm_server import ScriptedMLLM

QUESTION = "Which exit does the path reach?"
Body = Callable[[str], dict[str, object]]


def chat(url: str) -> dict[str, object]:
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "etchr-logic", "messages": [{"role": "user", "content": content}]}


def reward_item(**overrides: object) -> dict[str, object]:
    item = {"id": "q", "image": png_b64(), "question": QUESTION, "answer": "B", "edits": [png_b64()]}
    return {**item, **overrides}


def filter_item(**overrides: object) -> dict[str, object]:
    item = {"id": "q", "image": png_b64(), "question": QUESTION, "answer": "B", "edited_image": png_b64()}
    return {**item, **overrides}


JSON_CASES: list[tuple[str, str, Body]] = [
    ("editor", "/edit", lambda url: {"image": url, "question": QUESTION, "task": "logic"}),
    ("editor", "/jobs", lambda url: {"image": url, "question": QUESTION, "task": "logic"}),
    ("verifier", "/answer", lambda url: {"image": url, "question": QUESTION, "mode": "evr"}),
    ("verifier", "/v1/chat/completions", chat),
    ("reward", "/reward", lambda url: {"items": [reward_item(image=url)]}),
    ("reward", "/reward", lambda url: {"items": [reward_item(edits=[png_b64(), url])]}),
    ("reward", "/filter", lambda url: {"items": [filter_item(image=url)]}),
    ("reward", "/filter", lambda url: {"items": [filter_item(edited_image=url)]}),
]


def bait_urls(server: RecordingHTTPServer, case: str) -> list[str]:
    """Plain and https URLs (the latter to the same port: a fetch would still open a connection), one
    with a query string, one with an upper-case scheme."""
    host = server.url.removeprefix("http://")
    return [
        f"{server.url}/{case}.png",
        f"https://{host}/{case}.png",
        f"{server.url}/{case}/image.jpg?format=png",
        f"HTTP://{host}/{case}-upper.png",
    ]


@pytest.mark.parametrize(("name", "path", "make"), JSON_CASES)
def test_image_urls_are_refused_and_never_fetched(
    services: dict[str, Service],
    bait_server: RecordingHTTPServer,
    security_mllm: ScriptedMLLM,
    name: str,
    path: str,
    make: Body,
) -> None:
    before = len(security_mllm.requests)
    with httpx.Client(base_url=services[name].url, headers=AUTH, timeout=60) as client:
        for url in bait_urls(bait_server, path.strip("/").replace("/", "-")):
            response = client.post(path, json=make(url))
            assert 400 <= response.status_code < 500, response.text
            assert_error(response, response.status_code)
    assert bait_server.hits == [] and bait_server.connections == []
    # Nothing reached the MLLM either (a URL handed on would let *it* fetch on our behalf).
    assert len(security_mllm.requests) == before


def test_openai_images_edit_takes_an_upload_not_a_url(
    services: dict[str, Service], bait_server: RecordingHTTPServer
) -> None:
    with httpx.Client(base_url=services["editor"].url, headers=AUTH, timeout=60) as client:
        for url in bait_urls(bait_server, "images-edits"):
            for fields in ({"image": url, "prompt": QUESTION}, {"image_url": url, "prompt": QUESTION}):
                assert_error(client.post("/v1/images/edits", data=fields), 400, "invalid_field")
            # An upload whose *content* is a URL is not an image either.
            files = {"image": ("x.png", url.encode(), "image/png")}
            response = client.post("/v1/images/edits", data={"prompt": QUESTION}, files=files)
            assert_error(response, 400, "invalid_image")
            as_json = client.post("/v1/images/edits", content=json.dumps({"image": url, "prompt": QUESTION}))
            assert_error(as_json, 400)
    assert bait_server.hits == [] and bait_server.connections == []
