"""POST /filter (Eq. 1) decides each clause on a majority of k sampled decodings, or on one greedy decoding —
never on one sample — through the real reward service, Redis workers and a scripted MLLM that words its
answers the way real models do (reasoning, markdown, <think> blocks) before the boxed answer."""

from __future__ import annotations

import zlib

import httpx
import pytest

from etchr.protocol.reward import FilterRequest
from tests.editor.test_api import assert_error
from tests.reward.conftest import RewardFactory, colour_of, png
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM

QUESTION = "Which exit does the path reach? (A) left (B) right"

# How U really answers a multiple-choice question: the answer comes after reasoning, worded per model family.
RIGHT_REPLIES = (
    "Following the red line from the green start, it ends at the exit on the right side.\n\n\\boxed{B}",
    "<think>\nThe helper view shows the path. It turns twice and leaves through the right wall, option B."
    "\n</think>\n\nThe path reaches the right exit.\n\n\\boxed{B}",
    "The drawn path goes down, then right, and exits on the right.\n\n**Answer:** \\boxed{B}",
)
WRONG_REPLIES = (
    "The corridor from the start opens to the left, so the path reaches the left exit.\n\n\\boxed{A}",
    "<think>\nStart is top-left; the open cells lead left... option A.\n</think>\n\n\\boxed{A}",
)


def decodings(right: int, n: int) -> Reply:
    """``n`` choices, the first ``right`` of them correct, in varied real-model wordings."""
    return Reply(
        content=[
            RIGHT_REPLIES[i % len(RIGHT_REPLIES)] if i < right else WRONG_REPLIES[i % len(WRONG_REPLIES)]
            for i in range(n)
        ]
    )


def sampled(request: RecordedRequest) -> Reply:
    """Base query (one image): the original's red channel = correct decodings; with the edit (two images):
    the edit's red channel. Greedy requests (temperature 0) get the green channel's verdict (1 = right)."""
    image = request.images[-1]
    red, green, _ = colour_of(image)
    if request.temperature == 0:
        return decodings(green, 1)
    return decodings(red, request.n)


def row(row_id: str, alone: tuple[int, int], with_edit: tuple[int, int]) -> dict[str, object]:
    """(sampled right of k, greedy right) for the original alone and for the original + true edit."""
    return {
        "id": row_id,
        "image": png((alone[0], alone[1], zlib.crc32(row_id.encode()) % 256)),  # distinct: no shared queries
        "question": QUESTION,
        "answer": "B",
        "edited_image": png((with_edit[0], with_edit[1], 7)),
        "task": "logic",
    }


def post(url: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/filter", json=body, timeout=60)


def verdicts(response: httpx.Response) -> dict[str, tuple[float, float, bool, bool, bool]]:
    assert response.status_code == 200, response.text
    return {
        r["id"]: (r["base_correct"], r["edit_correct"], r["fails_alone"], r["succeeds_with_edit"], r["keep"])
        for r in response.json()["items"]
    }


def test_default_is_a_majority_of_four_sampled_decodings(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    mllm.responder = sampled
    body = {
        "items": [
            row("keep", (1, 0), (3, 0)),  # right 1/4 alone, 3/4 with the edit: both clauses hold
            row("tie-alone", (2, 0), (4, 0)),  # right in half the decodings alone is not "fails alone"
            row("tie-edit", (0, 0), (2, 0)),  # right in half with the edit is not "succeeds"
            row("easy", (4, 0), (4, 0)),
            row("hopeless", (0, 0), (1, 0)),
        ]
    }  # no k: the default
    response = post(reward_service(), body)
    assert verdicts(response) == {
        "keep": (0.25, 0.75, True, True, True),
        "tie-alone": (0.5, 1.0, False, True, False),
        "tie-edit": (0.0, 0.5, True, False, False),
        "easy": (1.0, 1.0, False, True, False),
        "hopeless": (0.0, 0.25, True, False, False),
    }
    assert response.json()["keep"] == ["keep"]
    requests = mllm.requests
    assert len(requests) == 10  # 5 rows × 2 clauses, one request each carrying n = 4
    assert all(r.n == 4 and r.temperature == pytest.approx(0.7) for r in requests)
    base = [r for r in requests if r.image_count == 1]
    assert len(base) == 5 and all("helper view" not in r.text for r in base)


def test_greedy_decides_each_clause_on_one_decoding_at_temperature_zero(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    mllm.responder = sampled
    url = reward_service()
    # Sampled, "flip" would be kept (1/4 alone, 3/4 with the edit); greedily U is right alone: dropped.
    items = [row("flip", (1, 1), (3, 1)), row("greedy-keep", (4, 0), (0, 1)), row("none", (0, 0), (0, 0))]
    greedy = post(url, {"items": items, "greedy": True})
    assert verdicts(greedy) == {
        "flip": (1.0, 1.0, False, True, False),
        "greedy-keep": (0.0, 1.0, True, True, True),
        "none": (0.0, 0.0, True, False, False),
    }
    assert greedy.json()["keep"] == ["greedy-keep"]
    assert all(r.n == 1 and r.temperature == 0 for r in mllm.requests)
    assert len(mllm.requests) == 6

    # The same rows sampled are other questions to the model: nothing is served from the greedy cache.
    mllm.reset()
    sampled_run = post(url, {"items": items, "k": 4})
    assert verdicts(sampled_run)["flip"] == (0.25, 0.75, True, True, True)
    assert sampled_run.json()["usage"]["cache_hits"] == 0
    assert all(r.n == 4 and r.temperature == pytest.approx(0.7) for r in mllm.requests)

    # greedy with k = 1 is the same request; greedy with k > 1 is a contradiction, not silently resolved
    again = post(url, {"items": items, "greedy": True, "k": 1})
    assert again.json()["usage"]["cache_hits"] == 6
    error = assert_error(post(url, {"items": items, "greedy": True, "k": 4}), 422, "validation_error")
    assert "greedy" in error["message"]


def test_a_one_sample_coin_flip_is_no_longer_the_default() -> None:
    """k = 1 stays available when asked for, but the default asks four decodings."""
    request = FilterRequest.model_validate({"items": [row("r", (0, 0), (0, 0))]})
    assert (request.k, request.greedy, request.decodings) == (4, False, 4)
    assert FilterRequest.model_validate({"items": [row("r", (0, 0), (0, 0))], "greedy": True}).decodings == 1
