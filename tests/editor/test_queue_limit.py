"""``ETCHR_EDITOR_QUEUE_MAX`` holds under concurrency: the depth check and the enqueue are one atomic step."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from etchr.settings import EditorSettings
from etchr_editor.jobs import QUEUE_NAME
from etchr_editor.service import create_app
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread

QUEUE_MAX = 3
CONCURRENT = 40


def edit_body() -> dict[str, object]:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    return {"image": image, "question": "Which exit does the path reach? Options: A, B, C.", "task": "logic"}


@pytest.fixture
def front_only(redis_server: RedisServer, key_prefix: str) -> Iterator[str]:
    """A front without a worker, so accepted jobs stay in the queue and the limit is what decides."""
    settings = EditorSettings(
        redis_url=redis_server.url, redis_prefix=key_prefix, editor_worker=False, editor_queue_max=QUEUE_MAX
    )
    server = UvicornThread(create_app(settings)).start()
    yield server.url
    server.stop()


async def post_jobs_at_once(url: str) -> list[httpx.Response]:
    body = edit_body()
    limits = httpx.Limits(max_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        return await asyncio.gather(*(http.post("/jobs", json=body) for _ in range(CONCURRENT)))


def test_concurrent_jobs_never_exceed_the_queue_limit(
    front_only: str, redis_server: RedisServer, key_prefix: str
) -> None:
    responses = asyncio.run(post_jobs_at_once(front_only))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [202] * QUEUE_MAX + [429] * (CONCURRENT - QUEUE_MAX), statuses
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) > 0
            assert response.json()["error"]["type"] == "queue_full"
    client = redis_server.client()
    try:
        assert client.xlen(f"{key_prefix}:{QUEUE_NAME}:jobs") == QUEUE_MAX
        # every accepted job, and only those, has a record
        accepted = {response.json()["id"] for response in responses if response.status_code == 202}
        record_keys = client.scan_iter(f"{key_prefix}:{QUEUE_NAME}:job:*")
        records = {key.decode().rsplit(":", 1)[1] for key in record_keys}
        assert records == accepted
    finally:
        client.close()
