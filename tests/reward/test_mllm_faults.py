"""Issue 21 (items 1 and 5) through POST /reward: an empty MLLM reply is a 503, never a cached reward of 0.

Real HTTP, a real Redis and the in-process query worker; the MLLM is the scripted test server, whose failure
injection sends ``"content": null``, ``"choices": []``, blank text and oversized replies.
"""

from __future__ import annotations

import pytest
import redis

from tests.editor.test_api import assert_error
from tests.reward.conftest import RIGHT, RewardFactory, kind_of, respond
from tests.reward.test_reward_api import item, post
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer

EMPTY_REPLIES = {
    "null content": Reply(content=None),
    "no choices": Reply(content=[]),
    "whitespace only": Reply(content="\n  \n"),
}


@pytest.mark.parametrize("empty", EMPTY_REPLIES.values(), ids=EMPTY_REPLIES.keys())
def test_an_empty_reply_is_503_naming_the_backend_and_nothing_is_cached(
    reward_service: RewardFactory, mllm: ScriptedMLLM, empty: Reply
) -> None:
    url = reward_service()
    body = {"items": [item([(4, 3), (1, 0)])], "k": 4}
    mllm.responder = lambda request: empty

    failed = post(url, "/reward", body)
    error = assert_error(failed, 503, "mllm_unavailable")
    assert f"test-vlm at {mllm.base_url}" in error["message"]
    assert ("no choices" if empty.content == [] else "empty content") in error["message"]
    assert failed.headers["retry-after"]

    mllm.responder = respond  # the backend recovers: the SAME request is computed, not read from a cache
    recovered = post(url, "/reward", body)
    assert recovered.status_code == 200, recovered.text
    rewards = recovered.json()["items"][0]["rewards"]
    assert [reward["guidance"] for reward in rewards] == [1.0, 0.25]  # scored, not a cached 0
    assert rewards[0]["reward"] > 0
    usage = recovered.json()["usage"]
    assert usage["cache_hits"] == 0 and usage["mllm_requests"] == 4  # 2 edits × (guidance + correctness)


def test_a_null_reply_is_retried_and_the_retry_is_counted(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    url = reward_service(mllm_max_retries=1)
    mllm.reply_next(Reply(content=None))  # the first query's first try comes back null, its retry is real
    response = post(url, "/reward", {"items": [item([(2, 2)])], "k": 2})
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["rewards"][0]["guidance"] == 1.0
    assert response.json()["usage"]["mllm_requests"] == 3 == len(mllm.requests)


def test_blank_decodings_are_asked_for_again_not_scored_as_wrong(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    """Half of one query's k=4 decodings come back null: only those are asked for again, so the query
    scores 4/4 (not 2/4, not 0), and the extra request is counted."""
    answered: list[RecordedRequest] = []

    def half_null_once(request: RecordedRequest) -> Reply | str:
        reply = respond(request)
        if answered:
            return reply
        answered.append(request)
        assert isinstance(reply, Reply) and isinstance(reply.content, list)
        return Reply(content=[text if i % 2 == 0 else None for i, text in enumerate(reply.content)])

    mllm.responder = half_null_once
    response = post(reward_service(), "/reward", {"items": [item([(4, 4)])], "k": 4})
    assert response.status_code == 200, response.text
    (reward,) = response.json()["items"][0]["rewards"]
    assert reward["guidance"] == 1.0 and reward["reward"] > 0
    assert sorted(request.n for request in mllm.requests) == [2, 4, 4]
    assert response.json()["usage"]["mllm_requests"] == 3


def test_an_oversized_reasoning_reply_is_capped_before_it_is_scored_and_cached(
    reward_service: RewardFactory, mllm: ScriptedMLLM, redis_server: RedisServer, key_prefix: str
) -> None:
    """4 MB reasoning replies: the final \\boxed{B} at their end still counts, and the query result cached
    in Redis (for ETCHR_REWARD_CACHE_TTL_S) holds the capped texts, not megabytes."""
    rambling = "<think>\n" + "Following the corridor, the path bends again. " * 90_000 + "\n</think>\n"

    def long_guidance(request: RecordedRequest) -> Reply | str:
        if kind_of(request) == "guidance":
            return Reply(content=[rambling + RIGHT] * request.n)
        return respond(request)

    mllm.responder = long_guidance
    response = post(reward_service(mllm_max_reply_chars=8192), "/reward", {"items": [item([(0, 2)])], "k": 2})
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["rewards"][0]["guidance"] == 1.0

    store = redis.Redis.from_url(redis_server.url)
    try:
        cached = [store.hget(key, "result") for key in store.scan_iter(f"{key_prefix}:reward:job:*")]
    finally:
        store.close()
    assert len(cached) == 2 and all(result is not None for result in cached)
    assert any(b"characters cut" in result for result in cached)
    assert all(len(result) < 3 * 8192 for result in cached)  # k = 2 capped texts and a little JSON
