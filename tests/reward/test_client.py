"""The trainer's client against a real reward service: splitting, alignment, retries, honest failures."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from etchr.clients.reward import AsyncRewardClient, RewardClient, RewardServiceError
from tests.reward.conftest import RewardFactory, png
from tests.reward.test_reward_api import QUESTION, item, post
from tests.support.redis_server import free_port


def items() -> list[dict[str, object]]:
    return [
        item([(4, 4), (1, 0)], item_id="a"),
        item([(2, 2)], item_id="b"),
        item([(0, 3), (3, 0)], item_id="c"),
    ]


def test_sync_client_splits_and_keeps_the_input_order(reward_service: RewardFactory) -> None:
    url = reward_service()
    direct = post(url, "/reward", {"items": items(), "k": 4}).json()
    with RewardClient(url, max_items_per_request=1) as client:
        result = client.reward(items(), k=4)
    assert [r.id for r in result.items] == ["a", "b", "c"]
    assert [r.model_dump() for r in result.items] == direct["items"]
    assert result.usage.queries == 10 and result.usage.cache_hits == 10  # the direct call filled the cache


def test_async_client_concurrent_chunks(reward_service: RewardFactory) -> None:
    url = reward_service()

    async def run() -> list[float]:
        async with AsyncRewardClient(url, max_items_per_request=1, max_concurrent_requests=3) as client:
            result = await client.reward(items(), k=4, alpha=0.5, advantage="pref-grpo")
        assert result.usage.mllm_requests == 10 and result.usage.cache_hits == 0
        return [r.reward for it in result.items for r in it.rewards]

    assert asyncio.run(run()) == [1.0, 0.125, 0.5, 0.375, 0.375]


def test_a_call_cancelled_mid_upload_frees_the_wire(reward_service: RewardFactory) -> None:
    """The async client puts one body on the wire at a time. A call cancelled while its body is on the wire
    (a trainer's timeout; here the peer stops reading, so the upload stalls) must hand the wire on, or every
    later call of that client would wait forever."""
    stalled = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(stalled.accept()[0]), daemon=True).start()
    big = item([(1, 1)], item_id="big", meta={"pad": "x" * 50_000_000})  # more than the socket buffers hold

    async def run() -> None:
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        async with AsyncRewardClient(url, retries=0) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.reward([big], k=1), timeout=2)
            assert not client._uploading.locked(), "the cancelled call still holds the wire"
            client._http.base_url = httpx.URL(reward_service())  # the same client, now to a live service
            result = await asyncio.wait_for(client.reward(items()[:2], k=1), timeout=30)
            assert [r.id for r in result.items] == ["a", "b"]

    try:
        asyncio.run(run())
    finally:
        for conn in accepted:
            conn.close()
        stalled.close()


def test_client_filter(reward_service: RewardFactory) -> None:
    rows = [
        {
            "id": "keep",
            "image": png((0, 0, 1)),
            "question": QUESTION,
            "answer": "B",
            "edited_image": png((1, 0, 2)),
        },
        {
            "id": "drop",
            "image": png((1, 0, 3)),
            "question": QUESTION,
            "answer": "B",
            "edited_image": png((1, 0, 4)),
        },
    ]
    with RewardClient(reward_service()) as client:
        outcome = client.filter(rows, k=1)
    assert outcome.keep == ["keep"] and [r.id for r in outcome.items] == ["keep", "drop"]


def test_bad_input_raises_at_once_with_the_servers_message(reward_service: RewardFactory) -> None:
    with RewardClient(reward_service(), retries=3) as client, pytest.raises(RewardServiceError) as caught:
        client.reward([item([(1, 1)], scorer="astrology")])
    assert caught.value.status == 400 and "astrology" in caught.value.message


def test_backend_down_is_retried_then_raised_never_zero_rewards(reward_service: RewardFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with (
        RewardClient(
            reward_service(mllm_base_url=[dead]), retries=1, backoff_s=0.05, max_retry_wait_s=0.1
        ) as client,
        pytest.raises(RewardServiceError) as caught,
    ):
        client.reward(items())
    assert caught.value.status == 503 and caught.value.type == "mllm_unavailable"
    assert dead in caught.value.message


def test_unreachable_service(reward_service: RewardFactory) -> None:
    client = RewardClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01)
    with client, pytest.raises(RewardServiceError) as caught:
        client.reward(items())
    assert caught.value.status is None and caught.value.type == "connection_error"


def test_bearer_token(reward_service: RewardFactory) -> None:
    url = reward_service(api_keys=["trainer-key"])
    with RewardClient(url) as anonymous, pytest.raises(RewardServiceError) as caught:
        anonymous.reward(items()[:1])
    assert caught.value.status == 401
    with RewardClient(url, api_key="trainer-key") as client:
        assert [r.id for r in client.reward(items()[:1]).items] == ["a"]
