"""The reward scorer on its own (no Redis): its cache key and the open-answer fallback's budget."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable

import pytest

from etchr.prompts import OPEN_ANSWER_JUDGE_PROMPT_VERSION
from etchr.settings import RewardSettings
from etchr.verdicts import READER_VERSION
from etchr_reward.scoring import Query, RewardScorer
from etchr_reward.worker import build_scorer
from tests.reward.conftest import kind_of, png
from tests.support.mllm_server import RecordedRequest, ScriptedMLLM

IMAGES = [base64.b64decode(png((0, 0, 0))), base64.b64decode(png((1, 0, 0)))]
OPEN = Query(
    kind="guidance",
    task="perception",
    question="What is leaning on the wall?",
    answer="a red bicycle leaning on the wall",
    k=2,
)


ScorerFactory = Callable[..., RewardScorer]


@pytest.fixture
async def make_scorer(mllm: ScriptedMLLM) -> AsyncIterator[ScorerFactory]:
    """Scorers as the reward worker builds them from its settings, with a judge budget of their own."""
    built: list[RewardScorer] = []

    def make(**settings: object) -> RewardScorer:
        options = {"mllm_base_url": [mllm.base_url], "mllm_model": "test-vlm", "reward_judge_max_tokens": 777}
        built.append(build_scorer(RewardSettings(**(options | settings))))
        return built[-1]

    yield make
    for scorer in built:
        await scorer.mllm.close_pair(scorer.judge)


def test_the_cache_key_holds_the_open_answer_judge_prompt_version(make_scorer: ScorerFactory) -> None:
    scorer = make_scorer()
    key = scorer.cache_key(OPEN, IMAGES)
    assert key["open_judge_prompt"] == OPEN_ANSWER_JUDGE_PROMPT_VERSION and key["reader"] == READER_VERSION
    assert key["judge_max_tokens"] == 777
    assert scorer.digest(OPEN, IMAGES) == hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    # no open-answer judge asked: neither its prompt nor its budget can change the answer
    correctness = OPEN.model_copy(update={"kind": "correctness"})
    assert scorer.cache_key(correctness, IMAGES)["open_judge_prompt"] is None
    rules_only = make_scorer(reward_open_judge=False)
    assert rules_only.cache_key(OPEN, IMAGES)["open_judge_prompt"] is None
    assert rules_only.digest(OPEN, IMAGES) != scorer.digest(OPEN, IMAGES)


async def test_open_answers_are_judged_with_the_reward_judge_budget(
    make_scorer: ScorerFactory, mllm: ScriptedMLLM
) -> None:
    def respond(request: RecordedRequest) -> str:
        if kind_of(request) == "open_judge":
            return "The model's answer names the same vehicle as the reference.\n\n\\boxed{1}"
        return "A bike is leaning there.\n\n\\boxed{a red bike by the wall}"

    mllm.responder = respond
    result = await make_scorer().run(OPEN, IMAGES)
    assert result.positive == [True, True] and result.verdicts == {"yes": 2} and result.requests == 3
    judged = [request for request in mllm.requests if kind_of(request) == "open_judge"]
    assert len(judged) == 2 and {request.max_tokens for request in judged} == {777}
