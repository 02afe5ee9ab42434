"""``x-request-id`` over real HTTP: a safe id is echoed byte for byte, any other is replaced."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from etchr.http import create_app
from etchr.metrics import ServiceMetrics
from etchr.settings import CommonSettings
from tests.support.servers import UvicornThread

FRESH_ID = re.compile(rb"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    app = create_app(title="request-id test", settings=CommonSettings(), metrics=ServiceMetrics("test"))
    server = UvicornThread(app).start()
    yield server.url
    server.stop()


def returned_ids(response: httpx.Response) -> list[bytes]:
    return [value for name, value in response.headers.raw if name.lower() == b"x-request-id"]


@pytest.mark.parametrize(
    "sent",
    [b"req-42", b"trace:4bf92f3577b34da6a3ce929d0e0e4736/00f067aa0ba902b7", b"A" * 128, b"~!#$%&'*+.^_`|"],
)
def test_a_safe_request_id_is_echoed_exactly(service: str, sent: bytes) -> None:
    response = httpx.get(f"{service}/healthz", headers={"x-request-id": sent})
    assert response.status_code == 200
    assert returned_ids(response) == [sent]


@pytest.mark.parametrize(
    "sent",
    [
        "café-42".encode(),  # UTF-8: used to come back as the Latin-1 reading re-encoded as UTF-8
        "café-42".encode("latin-1"),
        b"\xff\xfe\x80",
        b"A" * 129,
        b"two words",
    ],
)
def test_an_unsafe_request_id_is_replaced_by_a_fresh_one(service: str, sent: bytes) -> None:
    response = httpx.get(f"{service}/healthz", headers={"x-request-id": sent})
    assert response.status_code == 200
    (returned,) = returned_ids(response)
    assert FRESH_ID.match(returned), returned


def test_a_missing_request_id_is_made(service: str) -> None:
    first, second = (returned_ids(httpx.get(f"{service}/healthz")) for _ in range(2))
    assert len(first) == len(second) == 1
    assert FRESH_ID.match(first[0]) and FRESH_ID.match(second[0]) and first != second
