"""/reward and /filter while Redis refuses writes (maxmemory + noeviction): 503 + Retry-After, then recovery.

The test starts its own redis-server and fills it; the session Redis other tests share is never touched.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.reward.conftest import RewardFactory, png
from tests.support.redis_memory import assert_redis_refused, fill_until_oom, leave_headroom, lift_maxmemory
from tests.support.redis_server import RedisServer
from tests.support.servers import wait_until

QUESTION = "Which exit does the path reach? (A) left (B) right"


def reward_item(item_id: str, edits: list[tuple[int, int]]) -> dict[str, object]:
    return {
        "id": item_id,
        "image": png((0, 0, 9)),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [png((g, c, 0)) for g, c in edits],
    }


def filter_item(item_id: str, edit: tuple[int, int]) -> dict[str, object]:
    return {
        "id": item_id,
        "image": png((0, 0, 9)),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edited_image": png((*edit, 0)),
    }


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_redis_out_of_memory_gives_503_not_ready_and_recovers(
    reward_service: RewardFactory, own_redis: RedisServer
) -> None:
    with httpx.Client(base_url=reward_service(redis_url=own_redis.url), timeout=60) as http:
        cached = {"items": [reward_item("cached", [(4, 4), (1, 0)])], "k": 4}
        assert http.post("/reward", json=cached).status_code == 200

        fill_until_oom(own_redis)
        assert_redis_refused(http.post("/reward", json={"items": [reward_item("new", [(3, 1)])], "k": 4}))
        assert_redis_refused(http.post("/filter", json={"items": [filter_item("new", (4, 0))], "k": 4}))
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503, not_ready.text
        assert "retry-after" not in not_ready.headers  # probes poll on their own schedule
        assert "memory" in not_ready.json()["error"]["message"]
        # Scores already cached need no write: they are still served.
        again = http.post("/reward", json=cached)
        assert again.status_code == 200, again.text
        assert again.json()["usage"]["cache_hits"] == 4

        lift_maxmemory(own_redis)
        wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness after Redis had room")
        rewarded = http.post("/reward", json={"items": [reward_item("new", [(3, 1)])], "k": 4})
        assert rewarded.status_code == 200, rewarded.text
        assert rewarded.json()["items"][0]["rewards"][0]["guidance"] == 0.75
        filtered = http.post("/filter", json={"items": [filter_item("new", (4, 0))], "k": 4})
        assert filtered.status_code == 200, filtered.text
        assert filtered.json()["keep"] == ["new"]


def noise_png(seed: int, size: int = 320) -> str:
    """An incompressible image (~300 kB as PNG), bigger than the headroom left in Redis."""
    pixels = random.Random(seed).randbytes(size * size * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_query_refused_at_enqueue_does_not_leave_its_lock_behind(
    reward_service: RewardFactory, own_redis: RedisServer
) -> None:
    """Redis takes the small lock writes but refuses the enqueue that carries the images: the retry, once
    Redis has room, must compute the queries, not wait (and 504) on locks of jobs that were never queued."""
    url = reward_service(redis_url=own_redis.url, reward_deadline_s=4, max_body_bytes=8 * 1024 * 1024)
    item = {**reward_item("big", []), "image": noise_png(1), "edits": [noise_png(2)]}
    body = {"items": [item], "k": 4}
    with httpx.Client(base_url=url, timeout=60) as http:
        fill_until_oom(own_redis)
        leave_headroom(own_redis, 128 * 1024)
        assert http.get("/readyz").status_code == 200  # small writes still pass
        assert_redis_refused(http.post("/reward", json=body))

        lift_maxmemory(own_redis)
        retried = http.post("/reward", json=body)
        assert retried.status_code == 200, retried.text
        assert retried.json()["usage"]["mllm_requests"] == 2
