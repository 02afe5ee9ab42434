"""POST /reward end to end with judges that word their verdicts the way real models do.

R_corr votes and the open-answer judge go through the one verdict reader: only a clear yes is a positive
vote; a reply that disagrees with itself, hedges or has none is a negative one, counted by cause. The test
MLLM recognises a correctness call by its exact judge prompt (whatever its wording), and scripts the k
judge replies per edit by the edit's colour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from etchr.clients.reward import RewardClient
from etchr.tasks import TaskRegistry
from tests.editor.test_api import assert_error
from tests.reward.conftest import RewardFactory, colour_of, png
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM

QUESTION = "Which exit does the path reach? (A) left (B) right"
OPEN_QUESTION = "What is leaning against the wall?"
TASKS = TaskRegistry.default()
JUDGE_BOTH = TASKS.judge_prompt("logic", QUESTION, "both")
JUDGE_EDIT = TASKS.judge_prompt("logic", QUESTION, "edit")
JUDGE_PROMPTS = frozenset(
    TASKS.judge_prompt(task, question, images)
    for task in TASKS.ids()
    for question in (QUESTION, OPEN_QUESTION)
    for images in ("both", "edit")
)
ORIGINAL = (0, 0, 9)
RIGHT = "The drawn path ends at the right exit.\n\n\\boxed{B}"

# k = 4 judge replies per edit colour, worded as Qwen-VL, GPT-4o, Gemini and thinking models word them
JUDGED: dict[tuple[int, int, int], list[str]] = {
    (10, 0, 0): [
        "1",
        "No, there is no red box in image 1.",  # once read as a yes
        "The path in the second image reaches the right exit without crossing a wall.\n\n\\boxed{1}",
        "0 (the drawn path crosses a wall in step 1)",  # once read as a yes
    ],
    (20, 0, 0): [
        "yes or no",
        "<think>\nStep 1 right, step 2 down, no walls crossed.\n</think>\n\n\\boxed{1}",
        "Yes, a path is drawn. But it crosses the wall in row 2, so the answer is 0.",
        "The second image shows 1 red line through 4 cells.",
    ],
    (30, 0, 0): [
        "0. The image shows 1 red box, but it does not surround the cup.",
        "0\n\nThe second image has 2 boxes and only 1 of them is near the glove.",
        "**Verdict:** 1",
        "Final answer: yes",
    ],
}


def stage_of(request: RecordedRequest) -> str:
    if request.image_count == 0:
        return "open_judge"
    if request.text in JUDGE_PROMPTS:
        return "correctness"
    return "guidance" if request.image_count == 2 else "base"


@dataclass
class Script:
    """Per stage, a reply that overrides the default one (judge replies by colour, U always right)."""

    override: dict[str, Reply | str] = field(default_factory=dict)
    open_judge: str = "The model's answer names the same vehicle as the reference. Therefore: 1"

    def __call__(self, request: RecordedRequest) -> Reply | str:
        stage = stage_of(request)
        if stage in self.override:
            return self.override[stage]
        if stage == "correctness":
            return Reply(content=JUDGED[colour_of(request.images[-1])][: request.n])
        if stage == "open_judge":
            return self.open_judge
        return Reply(content=[RIGHT] * request.n)


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def mllm(script: Script) -> Iterator[ScriptedMLLM]:
    """Overrides the reward conftest's test MLLM (the ``reward_service`` fixture is wired to it)."""
    server = ScriptedMLLM(script).start()
    yield server
    server.stop()


def reward(url: str, edits: list[tuple[int, int, int]], **extra: object) -> httpx.Response:
    item = {
        "id": "q1",
        "image": png(ORIGINAL),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [png(colour) for colour in edits],
    }
    return httpx.post(f"{url}/reward", json={"items": [item], "k": 4, **extra}, timeout=60)


def correctness_requests(mllm: ScriptedMLLM) -> list[RecordedRequest]:
    return [request for request in mllm.requests if stage_of(request) == "correctness"]


def test_correctness_counts_only_the_votes_that_mean_yes(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    url = reward_service()
    response = reward(url, list(JUDGED))
    assert response.status_code == 200, response.text
    (item,) = response.json()["items"]
    assert [r["correctness"] for r in item["rewards"]] == [0.5, 0.25, 0.5]
    assert [r["guidance"] for r in item["rewards"]] == [1.0, 1.0, 1.0]

    requests = correctness_requests(mllm)
    assert len(requests) == 3
    for request in requests:  # today's default: [original, edit], the judge's own budget and temperature
        assert request.image_count == 2 and request.text == JUDGE_BOTH
        assert request.max_tokens == 2048 and request.temperature == pytest.approx(0.7)
    guidance = [request for request in mllm.requests if stage_of(request) == "guidance"]
    assert guidance and all(request.max_tokens == 4096 for request in guidance)

    metrics = httpx.get(f"{url}/metrics").text
    for cause, count in (("yes", 5), ("no", 4), ("disagree", 1), ("hedge", 1), ("none", 1)):
        line = f'etchr_reward_verdict_causes_total{{cause="{cause}",kind="correctness"}} {count}.0'
        assert line in metrics, line


def test_correctness_on_the_edit_alone_by_request_or_setting(
    reward_service: RewardFactory, mllm: ScriptedMLLM
) -> None:
    url = reward_service()
    both = reward(url, [(10, 0, 0)])
    edit_alone = reward(url, [(10, 0, 0)], correctness_images="edit")
    assert both.status_code == edit_alone.status_code == 200, edit_alone.text
    assert edit_alone.json()["items"][0]["rewards"][0]["correctness"] == 0.5
    # a different question to the judge: computed, not served from the first one's cache
    assert edit_alone.json()["usage"]["cache_hits"] == 1  # only the guidance query is shared
    first, second = correctness_requests(mllm)
    assert first.image_count == 2 and first.text == JUDGE_BOTH
    assert second.image_count == 1 and second.text == JUDGE_EDIT
    assert colour_of(second.images[0]) == (10, 0, 0)

    mllm.reset()
    url = reward_service(reward_correctness_images="edit")
    assert reward(url, [(20, 0, 0)]).status_code == 200
    (request,) = correctness_requests(mllm)
    assert request.image_count == 1 and request.text == JUDGE_EDIT
    assert reward(url, [(20, 0, 0)], correctness_images="both").status_code == 200
    assert correctness_requests(mllm)[-1].image_count == 2

    assert_error(reward(url, [(20, 0, 0)], correctness_images="original"), 422)


def test_judge_cut_before_its_verdict_fails_the_query_and_is_never_cached(
    reward_service: RewardFactory, mllm: ScriptedMLLM, script: Script
) -> None:
    url = reward_service()
    script.override["correctness"] = Reply(
        content=["1", "<think>\nStep 1 goes right, step 2 goes", "0", "1"],
        finish_reason=["stop", "length", "stop", "stop"],
    )
    error = assert_error(reward(url, [(10, 0, 0)]), 502, "mllm_rejected")
    assert "ETCHR_REWARD_JUDGE_MAX_TOKENS" in error["message"] and mllm.base_url in error["message"]

    # cut after the verdict was stated: the vote counts
    script.override["correctness"] = Reply(
        content=["1", "1. The path reaches the exit and", "0", "1"],
        finish_reason=["stop", "length", "stop", "stop"],
    )
    response = reward(url, [(10, 0, 0)])
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["rewards"][0]["correctness"] == 0.75
    assert response.json()["usage"]["cache_hits"] == 1  # the guidance query; the failed one was not kept

    metrics = httpx.get(f"{url}/metrics").text
    assert 'etchr_reward_truncated_total{kind="correctness",outcome="failed"} 1.0' in metrics
    assert 'etchr_reward_truncated_total{kind="correctness",outcome="used"} 1.0' in metrics


def test_answer_cut_before_it_is_stated_fails_the_query(
    reward_service: RewardFactory, mllm: ScriptedMLLM, script: Script
) -> None:
    url = reward_service()
    script.override["guidance"] = Reply(
        content=[RIGHT, "<think>\nThe path from the start goes", RIGHT, RIGHT],
        finish_reason=["stop", "length", "stop", "stop"],
    )
    error = assert_error(reward(url, [(10, 0, 0)]), 502, "mllm_rejected")
    assert "ETCHR_REWARD_MAX_TOKENS" in error["message"]

    script.override["guidance"] = Reply(
        content=[RIGHT, "\\boxed{B}\n\nTo verify, the path from step 1", "\\boxed{A}", RIGHT],
        finish_reason=["stop", "length", "stop", "stop"],
    )
    response = reward(url, [(10, 0, 0)])
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["rewards"][0]["guidance"] == 0.75
    metrics = httpx.get(f"{url}/metrics").text
    assert 'etchr_reward_truncated_total{kind="guidance",outcome="failed"} 1.0' in metrics
    assert 'etchr_reward_truncated_total{kind="guidance",outcome="used"} 1.0' in metrics


@pytest.mark.parametrize(
    ("judge_reply", "guidance"),
    [
        ("The model's answer names the same vehicle as the reference. Therefore: 1", 1.0),
        ("<think>\nA bike is a bicycle.\n</think>\n\n\\boxed{1}", 1.0),
        ("0. The model says 1 bicycle on the left; the reference says the right.", 0.0),
        ("Yes, both name a bicycle. But the side differs, so the answer is 0.", 0.0),
        ("It is unclear whether 'bike' and 'red bicycle' are the same object.", 0.0),
    ],
)
def test_open_answers_are_judged_through_the_same_reader(
    reward_service: RewardFactory, mllm: ScriptedMLLM, script: Script, judge_reply: str, guidance: float
) -> None:
    url = reward_service()
    script.open_judge = judge_reply
    script.override["guidance"] = Reply(content=["Answer: a red bike near the right door"] * 4)
    item = {
        "id": "q1",
        "image": png(ORIGINAL),
        "question": OPEN_QUESTION,
        "answer": "a red bicycle by the right door",
        "task": "perception",
        "edits": [png((10, 0, 0))],
    }
    response = httpx.post(f"{url}/reward", json={"items": [item], "k": 4}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["rewards"][0]["guidance"] == guidance
    judged = [request for request in mllm.requests if stage_of(request) == "open_judge"]
    assert len(judged) == 4 and all(request.max_tokens == 2048 for request in judged)
    assert "Model's answer: a red bike near the right door" in judged[0].text


def test_python_client_asks_for_the_edit_alone(reward_service: RewardFactory, mllm: ScriptedMLLM) -> None:
    item = {
        "id": "q1",
        "image": png(ORIGINAL),
        "question": QUESTION,
        "answer": "B",
        "task": "logic",
        "edits": [png((30, 0, 0))],
    }
    with RewardClient(reward_service()) as client:
        result = client.reward([item], k=4, correctness_images="edit")
    assert result.items[0].rewards[0].correctness == 0.5
    (request,) = correctness_requests(mllm)
    assert request.image_count == 1 and request.text == JUDGE_EDIT
