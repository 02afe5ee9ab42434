"""POST /reward and POST /filter over real HTTP, with real Redis workers and the scripted test MLLM."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.editor.test_api import assert_error
from tests.reward.conftest import RewardFactory, kind_of, png
from tests.support.mllm_server import Reply, ScriptedMLLM
from tests.support.redis_server import free_port

QUESTION = "Which exit does the path reach? (A) left (B) right"


def item(
    edits: list[tuple[int, int]], *, item_id: str = "q1", original: tuple[int, int, int] = (0, 0, 9), **extra
):
    return {
        "id": item_id,
        "image": png(original),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [png((g, c, 0)) for g, c in edits],
        **extra,
    }


def post(url: str, path: str, body: dict[str, object], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=timeout)


def test_rewards_win_rates_and_advantages_by_hand(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    response = post(reward_service(), "/reward", {"items": [item([(4, 4), (2, 0), (2, 0)])], "k": 4})
    assert response.status_code == 200, response.text
    (result,) = response.json()["items"]
    assert result["id"] == "q1"
    assert result["rewards"] == [
        {"guidance": 1.0, "correctness": 1.0, "reward": 1.0},
        {"guidance": 0.5, "correctness": 0.0, "reward": 0.25},
        {"guidance": 0.5, "correctness": 0.0, "reward": 0.25},
    ]
    assert result["win_rates"] == [1.0, 0.25, 0.25]  # ties count 0.5
    # (w − mean)/(std + 1e-8), population std of [1, .25, .25] = sqrt(0.125)
    expected = [0.5 / math.sqrt(0.125), -0.25 / math.sqrt(0.125), -0.25 / math.sqrt(0.125)]
    assert result["advantages"] == pytest.approx(expected, rel=1e-6)

    # the two identical edits are one question each to U and J: 4 queries, one request each (n = k)
    usage = response.json()["usage"]
    assert usage == {"mllm_requests": 4, "cache_hits": 0, "coalesced": 0, "queries": 4}
    guidance = [r for r in mllm.requests if kind_of(r) == "guidance"]
    correctness = [r for r in mllm.requests if kind_of(r) == "correctness"]
    assert len(guidance) == 2 and len(correctness) == 2
    for request in guidance + correctness:
        assert request.n == 4 and request.temperature == pytest.approx(0.7)
        assert QUESTION in request.text
        assert request.images[0].split(",", 1)[1] == png((0, 0, 9))  # the original first, unchanged
    assert "helper view" in guidance[0].text


def test_alpha_grpo_none_and_a_group_of_one(reward_service: RewardFactory) -> None:
    url = reward_service()
    body = {"items": [item([(3, 1), (1, 3)])], "k": 4, "alpha": 0.3, "advantage": "grpo"}
    (result,) = post(url, "/reward", body).json()["items"]
    rewards = [r["reward"] for r in result["rewards"]]
    assert rewards == pytest.approx([0.3 * 0.75 + 0.7 * 0.25, 0.3 * 0.25 + 0.7 * 0.75])
    assert result["win_rates"] is None
    assert result["advantages"] == pytest.approx([-1.0, 1.0], abs=1e-6)  # two values: ±1 after normalising

    (none,) = post(url, "/reward", {**body, "advantage": "none"}).json()["items"]
    assert none["win_rates"] is None and none["advantages"] is None

    (single,) = post(url, "/reward", {"items": [item([(2, 2)])], "k": 4}).json()["items"]
    assert single["win_rates"] == [0.5] and single["advantages"] == [0.0]


def test_repeated_request_is_served_from_the_cache(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    url = reward_service()
    body = {"items": [item([(4, 4), (1, 2)])], "k": 2}
    first = post(url, "/reward", body).json()
    seen = len(mllm.requests)
    second = post(url, "/reward", body).json()
    assert second["items"] == first["items"]
    assert second["usage"] == {"mllm_requests": 0, "cache_hits": 4, "coalesced": 0, "queries": 4}
    assert len(mllm.requests) == seen
    # a different k is a different question: no cache hit
    third = post(url, "/reward", {**body, "k": 3}).json()
    assert third["usage"]["cache_hits"] == 0


def test_identical_queries_in_flight_are_computed_once(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    mllm.latency_s = 0.5
    url = reward_service()
    body = {"items": [item([(4, 4), (2, 2)])], "k": 4}
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: post(url, "/reward", body), range(2)))
    assert all(r.status_code == 200 for r in responses)
    assert responses[0].json()["items"] == responses[1].json()["items"]
    assert len(mllm.requests) == 4  # 2 edits × (guidance + correctness), once
    usages = [r.json()["usage"] for r in responses]
    assert sum(u["coalesced"] + u["cache_hits"] for u in usages) == 4
    assert sum(u["mllm_requests"] for u in usages) == 4


def test_k_decodings_from_a_backend_that_ignores_n(reward_service: RewardFactory) -> None:
    from tests.reward.conftest import respond

    single_choice = ScriptedMLLM(respond, honour_n=False).start()
    try:
        url = reward_service(mllm_base_url=[single_choice.base_url])
        body = post(url, "/reward", {"items": [item([(4, 0)])], "k": 4}).json()
        assert body["usage"]["mllm_requests"] == 8  # 4 one-choice requests per query, 2 queries
        assert body["items"][0]["rewards"][0] == {"guidance": 1.0, "correctness": 0.0, "reward": 0.5}
    finally:
        single_choice.stop()


def test_a_dead_backend_among_several_is_skipped(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    url = reward_service(mllm_base_url=[dead, mllm.base_url])
    for i in range(3):
        response = post(url, "/reward", {"items": [item([(4, i)])], "k": 2})
        assert response.status_code == 200, response.text
        assert response.json()["items"][0]["rewards"][0]["correctness"] == min(i, 2) / 2


def test_a_backend_that_stays_down_is_503_naming_it_never_a_zero(reward_service: RewardFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    response = post(reward_service(mllm_base_url=[dead]), "/reward", {"items": [item([(4, 4)])], "k": 2})
    error = assert_error(response, 503, "mllm_unavailable")
    assert dead in error["message"]
    assert response.headers["retry-after"]


def test_a_failing_backend_is_503_and_recovers(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    from tests.reward.conftest import respond

    url = reward_service()
    mllm.responder = lambda request: Reply(status=500, content="GPU on fire")
    body = {"items": [item([(4, 4)])], "k": 2}
    assert "GPU on fire" in assert_error(post(url, "/reward", body), 503, "mllm_unavailable")["message"]
    mllm.responder = respond  # the failure is not cached: the next request computes again
    recovered = post(url, "/reward", body)
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["items"][0]["rewards"][0]["reward"] == 1.0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"items": [item([(1, 1)], image="not an image")]}, 400),
        ({"items": [{**item([(1, 1)]), "edits": ["%%%"]}]}, 400),
        ({"items": [item([(1, 1)]), item([(1, 1)])]}, 400),  # duplicate ids
        ({"items": [item([(1, 1)], scorer="astrology")]}, 400),
        ({"items": [item([(1, 1)], scorer="path", meta={"grid": [[0]]})]}, 400),  # maze without start/goal
        ({"items": [item([])]}, 422),
        ({"items": []}, 422),
        ({"items": [item([(1, 1)])], "k": 0}, 422),
        ({"items": [item([(1, 1)])], "alpha": 1.5}, 422),
        ({"items": [item([(1, 1)])], "advantage": "ppo"}, 422),
        ({"items": [{"id": "x", "question": QUESTION}]}, 422),
    ],
)
def test_malformed_requests_are_4xx_and_cost_nothing(
    reward_service: RewardFactory, mllm: ScriptedMLLM, body: dict[str, object], status: int
) -> None:
    assert_error(post(reward_service(), "/reward", body), status)
    assert mllm.requests == []


def test_a_body_that_is_not_json_is_422_and_costs_nothing(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    body = b'{"items": [{"id": "q1", "image": "'  # a JSON document that stops mid-string
    response = httpx.post(
        f"{reward_service()}/reward", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert "JSON decode error" in assert_error(response, 422, "validation_error")["message"]
    assert mllm.requests == []


def test_integers_beyond_64_bits_are_read_exactly(reward_service: RewardFactory) -> None:
    """Bodies are not parsed by ``json.loads`` (etchr.fast_json_route); a ``meta`` integer beyond 64 bits (a
    seed, a hash) must still arrive exact, not as the nearest float. It is part of the guidance query, so a
    seed one higher is another query, while the correctness query (no ground truth) comes from the cache."""
    url = reward_service()
    for seed, hits in ((2**70, 0), (2**70 + 1, 1)):
        response = post(url, "/reward", {"items": [item([(1, 1)], meta={"seed": seed})], "k": 1})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["cache_hits"] == hits, seed


def test_too_many_queries_for_one_request(reward_service: RewardFactory) -> None:
    url = reward_service(reward_max_queries=4)
    error = assert_error(post(url, "/reward", {"items": [item([(1, 1)] * 3)]}), 400, "too_many_queries")
    assert "ETCHR_REWARD_MAX_QUERIES" in error["message"]


def test_open_answers_fall_back_to_the_judge(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    mllm.responder = lambda request: (
        "1"
        if kind_of(request) == "open_judge" and "bike" in request.text
        else "\\boxed{a red bike by the wall}"
    )
    url = reward_service()
    answer = "a red bicycle leaning on the wall"
    (result,) = post(
        url, "/reward", {"items": [item([(0, 0)], answer=answer, task="perception")], "k": 2}
    ).json()["items"]
    assert result["rewards"][0]["guidance"] == 1.0
    judges = [r for r in mllm.requests if kind_of(r) == "open_judge"]
    assert len(judges) == 2 and answer in judges[0].text

    off = reward_service(reward_open_judge=False, redis_prefix="no-open-judge")
    (strict,) = post(
        off, "/reward", {"items": [item([(0, 0)], answer=answer, task="perception")], "k": 2}
    ).json()["items"]
    assert strict["rewards"][0]["guidance"] == 0.0


def test_filter_keeps_only_rows_the_edit_turns_from_wrong_to_right(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    def row(row_id: str, base_right: int, edit_right: int) -> dict[str, object]:
        return {
            "id": row_id,
            "image": png((base_right, 0, len(row_id))),  # distinct originals: no shared queries
            "question": QUESTION,
            "answer": "B",
            "edited_image": png((edit_right, 0, 2)),
            "task": "logic",
        }

    body = {"items": [row("keep", 0, 1), row("easy", 1, 1), row("hopeless", 0, 0)], "k": 1}
    response = post(reward_service(), "/filter", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["keep"] == ["keep"]
    assert [(r["id"], r["base_correct"], r["edit_correct"], r["keep"]) for r in result["items"]] == [
        ("keep", 0.0, 1.0, True),
        ("easy", 1.0, 1.0, False),
        ("hopeless", 0.0, 0.0, False),
    ]
    base = [r for r in mllm.requests if kind_of(r) == "base"]
    assert len(base) == 3 and all(r.image_count == 1 for r in base)

    soft = post(reward_service(), "/filter", {"items": [row("soft", 1, 3)], "k": 4}).json()
    assert soft["items"][0] == {
        "id": "soft",
        "base_correct": 0.25,
        "edit_correct": 0.75,
        "fails_alone": True,
        "succeeds_with_edit": True,
        "keep": True,
    }


def test_metrics(reward_service: RewardFactory) -> None:
    url = reward_service()
    body = {"items": [item([(1, 1)])], "k": 2}
    post(url, "/reward", body)
    post(url, "/reward", body)
    metrics = httpx.get(f"{url}/metrics").text
    for line in (
        'etchr_reward_queries_total{kind="guidance",source="computed"} 1.0',
        'etchr_reward_queries_total{kind="guidance",source="cache"} 1.0',
        'etchr_reward_mllm_requests_total{kind="correctness"} 1.0',
        "etchr_reward_queue_waiting 0.0",
        "etchr_reward_query_seconds_count",
    ):
        assert line in metrics, line


def test_no_mllm_configured(reward_service: RewardFactory) -> None:
    url = reward_service(mllm_base_url=[])
    error = assert_error(
        post(url, "/reward", {"items": [item([(1, 1)])], "k": 1}), 503, "mllm_not_configured"
    )
    assert "ETCHR_MLLM_BASE_URL" in error["message"]
    assert "ETCHR_MLLM_BASE_URL" in assert_error(httpx.get(f"{url}/readyz"), 503, "not_ready")["message"]


def test_deadline_is_504_not_a_partial_batch(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    mllm.latency_s = 3.0
    url = reward_service(reward_deadline_s=0.5)
    error = assert_error(post(url, "/reward", {"items": [item([(4, 4)])], "k": 1}), 504, "deadline_exceeded")
    assert "ETCHR_REWARD_DEADLINE_S" in error["message"]
