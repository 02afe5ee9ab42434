"""The playground over plain HTTP: served from the package, public, offline-only, in step with the API."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import get_args

import httpx

from etchr.protocol.answer import AnswerMode, AnswerTask
from etchr_verifier.api import PLAYGROUND_DIR
from tests.verifier.conftest import VerifierFactory


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_page_and_assets_are_public_while_the_api_needs_a_token(verifier: VerifierFactory) -> None:
    url = verifier(api_keys=["playground-secret"])
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>ETCHR playground</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
    parser = _Assets()
    parser.feed(page.text)
    assert sorted(parser.urls) == ["playground/app.js", "playground/style.css"]
    types = {"playground/app.js": "javascript", "playground/style.css": "text/css"}
    for asset in parser.urls:
        response = httpx.get(f"{url}/{asset}")
        assert response.status_code == 200, asset
        assert types[asset] in response.headers["content-type"]
        assert response.content == (PLAYGROUND_DIR / asset.split("/")[-1]).read_bytes()
    config = httpx.get(f"{url}/playground/config.json").json()
    assert config["auth_required"] is True
    # the API itself still needs the token
    assert httpx.post(f"{url}/answer", json={}).status_code == 401


def test_config_lists_every_task_and_mode_the_api_accepts(verifier: VerifierFactory) -> None:
    config = httpx.get(f"{verifier()}/playground/config.json").json()
    assert config["auth_required"] is False
    assert config["tasks"][0] == "auto" and sorted(config["tasks"]) == sorted(get_args(AnswerTask))
    assert config["modes"] == list(get_args(AnswerMode))


def test_only_shipped_files_are_served(verifier: VerifierFactory) -> None:
    url = verifier()
    for path in ("/playground/missing.js", "/playground/..%2Fapi.py", "/playground/%2E%2E%2Fapi.py"):
        response = httpx.get(f"{url}{path}")
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found"
    assert httpx.get(f"{url}/playground/../api.py").status_code == 404


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Offline by construction: no absolute URL, protocol-relative URL or CSS import in the shipped files."""
    for path in PLAYGROUND_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|[\"'(]//|@import", text), f"{path.name} names an outside resource"
