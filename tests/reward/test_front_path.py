"""The front's path at RL sizes (issue 20) and when to send ``Retry-After`` (issue 17, item 5).

Real HTTP, a real Redis, the in-process query worker and the scripted test MLLM.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from etchr.clients.reward import AsyncRewardClient, RewardClient, RewardServiceError
from etchr.settings import RewardSettings
from etchr_reward import jobs
from etchr_reward.jobs import ImagesGone, ImageStore, reward_queue
from etchr_reward.scoring import QueryImage
from tests.editor.test_api import assert_error
from tests.reward.conftest import RewardFactory, png
from tests.reward.test_reward_api import item, post
from tests.support.mllm_server import Reply, ScriptedMLLM
from tests.support.redis_memory import fill_until_oom, leave_headroom
from tests.support.redis_server import RedisServer


class Recording(httpx.HTTPTransport):
    """A real transport that keeps every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        return await super().handle_async_request(request)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _mget_calls(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))
    finally:
        client.close()


def test_a_bad_image_in_item_3_of_4_is_400_naming_it_and_nothing_is_queued(
    reward_service: RewardFactory, mllm: ScriptedMLLM, redis_server: RedisServer, key_prefix: str
) -> None:
    """Every image of a request is checked before any of its queries is queued: no MLLM call, no stream
    entry and no stored image is left behind by a request that is refused."""
    url = reward_service()
    items = [item([(1, 1), (2, 2)], item_id=f"q{i}", original=(0, i, 9)) for i in range(4)]  # 16 queries
    items[3]["edits"][1] = png((3, 3, 3))[:-12] + "AAAAAAAAAAAA"  # a PNG whose IEND chunk is damaged
    error = assert_error(post(url, "/reward", {"items": items, "k": 1}), 400, "invalid_image")
    assert error["param"] == "items.3.edits.1"
    assert "item 'q3' edits[1]" in error["message"]
    assert mllm.requests == []
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert list(client.scan_iter(f"{key_prefix}:reward:image:*")) == []
        stream = f"{key_prefix}:reward:jobs"
        assert client.xinfo_stream(stream)["entries-added"] == 0  # made at start-up, never written to
        items[3]["edits"][1] = png((3, 3, 0))  # the same request with a sound image is queued and scored
        answered = post(url, "/reward", {"items": items, "k": 1})
        assert answered.status_code == 200, answered.text
        assert client.xinfo_stream(stream)["entries-added"] == 2 * 8 == len(mllm.requests)
    finally:
        client.close()

    filtered = {**item([(1, 1)], item_id="f"), "edited_image": "%%%"}
    filtered.pop("edits")
    mllm.reset()
    error = assert_error(post(url, "/filter", {"items": [filtered]}), 400, "invalid_image")
    assert error["param"] == "items.0.edited_image"
    assert mllm.requests == []


def test_retry_after_is_sent_only_where_a_retry_can_help(
    reward_service: RewardFactory, mllm: ScriptedMLLM, key_prefix: str
) -> None:
    # No MLLM configured: a deployment fix, not a wait. No Retry-After, and the client does not retry.
    # (Its own stream: its worker must not take the other service's queries.)
    unconfigured = reward_service(mllm_base_url=[], redis_prefix=f"{key_prefix}-unconfigured")
    failed = post(unconfigured, "/reward", {"items": [item([(1, 1)])], "k": 1})
    assert_error(failed, 503, "mllm_not_configured")
    assert "retry-after" not in failed.headers
    transport = Recording()
    with (
        RewardClient(unconfigured, retries=3, backoff_s=0, transport=transport) as client,
        pytest.raises(RewardServiceError) as raised,
    ):
        client.reward([item([(1, 1)])], k=1)
    assert raised.value.type == "mllm_not_configured" and len(transport.sent) == 1

    # A 4xx: the same request would fail the same way.
    url = reward_service()
    refused = post(url, "/reward", {"items": [item([(1, 1)], image="not an image")], "k": 1})
    assert_error(refused, 400, "invalid_image")
    assert "retry-after" not in refused.headers

    # The backend is down: worth retrying, and the service says when.
    mllm.responder = lambda request: Reply(status=503, content="warming up")
    down = post(url, "/reward", {"items": [item([(2, 2)])], "k": 1})
    assert_error(down, 503, "mllm_unavailable")
    assert down.headers["retry-after"] == "5"


def test_the_async_client_spreads_a_call_over_its_slots(reward_service: RewardFactory) -> None:
    """Three groups and three slots: three sub-requests (one group each), not one request of three, so the
    service starts scoring the first group while the others are still on the wire; results keep the order."""
    url = reward_service()
    items = [item([(i + 1, 1), (1, i + 1)], item_id=f"g{i}") for i in range(3)]
    direct = post(url, "/reward", {"items": items, "k": 2}).json()["items"]
    transport = AsyncRecording()

    async def run() -> list[dict[str, object]]:
        async with AsyncRewardClient(url, max_concurrent_requests=3, transport=transport) as client:
            result = await client.reward(items, k=2)
        return [reward.model_dump() for reward in result.items]

    assert asyncio.run(run()) == direct
    assert len(transport.bodies) == 3 and all(body.count(b'"id"') == 1 for body in transport.bodies)


def test_the_in_process_worker_uses_the_images_the_front_checked(
    reward_service: RewardFactory, redis_server: RedisServer
) -> None:
    """The worker beside the front does not read back from Redis the images it was handed (a 512² group is
    ~4 MB); the images are still stored first, for other workers and for a reclaim after a crash."""
    url = reward_service()
    before = _mget_calls(redis_server.url)
    response = post(url, "/reward", {"items": [item([(4, 4), (1, 0)])], "k": 2})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["mllm_requests"] == 4
    assert _mget_calls(redis_server.url) == before


def test_a_shared_store_serves_what_it_wrote_and_a_plain_one_reads_redis(
    redis_server: RedisServer, key_prefix: str
) -> None:
    settings = RewardSettings(redis_url=redis_server.url, redis_prefix=key_prefix)  # type: ignore[call-arg]
    image = QueryImage.from_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        queue = reward_queue(client, settings)
        shared = ImageStore.for_deadline(queue, 30, keep_written=True)
        async with client.pipeline(transaction=False) as pipe:
            keys = shared.put(pipe, "r1", [image])
            await pipe.execute()
        assert await client.get(keys[0]) == image.data  # stored for any worker, as before
        assert (await ImageStore(queue, ttl_s=1).get("r1", [image.digest]))[0].data == image.data
        await shared.drop(keys)
        assert (await shared.get("r1", [image.digest]))[0] is image  # the very object the front checked
        with pytest.raises(ImagesGone):
            await ImageStore(queue, ttl_s=1).get("r1", [image.digest])
        await client.aclose()

    asyncio.run(scenario())


def test_images_are_stored_in_bounded_pipelines_and_a_refusal_leaves_none(
    own_redis: RedisServer, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's images go to Redis a few MB per pipeline; when Redis refuses one (maxmemory), the ones
    already stored are deleted, so a refused request leaves no image behind."""
    settings = RewardSettings(redis_url=own_redis.url, redis_prefix=key_prefix)  # type: ignore[call-arg]
    magic = b"\x89PNG\r\n\x1a\n"  # the store checks nothing; the media type is read off the magic number
    small = [QueryImage.from_bytes(magic + bytes([i]) * 1000) for i in range(5)]
    big = QueryImage.from_bytes(magic + random.Random(3).randbytes(600_000))
    monkeypatch.setattr(jobs, "IMAGE_PIPELINE_BYTES", 2500)  # two or three small images per pipeline

    async def scenario() -> None:
        client = aioredis.Redis.from_url(own_redis.url)
        queue = reward_queue(client, settings)
        store = ImageStore.for_deadline(queue, 30)
        keys = await store.write("r1", [*small, small[0]])
        assert len(keys) == 5 and [await client.get(key) for key in keys] == [i.data for i in small]
        await store.drop(keys)
        fill_until_oom(own_redis)
        leave_headroom(own_redis, 128 * 1024)
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            await store.write("r2", [*small, big])  # the small ones pass, the big one is refused
        assert [key async for key in client.scan_iter(f"{key_prefix}:reward:image:r2:*")] == []
        await client.aclose()

    asyncio.run(scenario())
