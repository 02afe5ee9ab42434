"""The one open-answer fallback (reward and eval alike), over real HTTP against the test MLLM server.

The judge replies are worded the way real judges word them: an explanation then a boxed verdict (GPT-4o,
Qwen2.5-VL), a Qwen3/QwQ thinking block before the verdict, a leading "No," with numbers in the reasoning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from etchr.manifest import ManifestRow
from etchr.mllm import Backend, MLLMClient, MLLMIncomplete
from etchr.open_answer_judge import Graded, OpenAnswerJudge, grade_answer
from etchr.verdicts import Verdict
from tests.support.mllm_server import Reply, ScriptedMLLM

QUESTION = "What is the man holding?"
SETTING = "ETCHR_TEST_JUDGE_MAX_TOKENS"
# Real judges' replies, as they word them.
YES_BOXED = "The answer is correct.\n\n\\boxed{1}"
YES_EXPLAINED = "The model says a red umbrella; the reference says an umbrella. Same object.\n\n\\boxed{1}"
NO_THINKING = (
    "<think>\nThe reference says an umbrella. The model's answer is a cane, which is 1 different object; "
    "step 1 of the rubric says different objects get 0.\n</think>\n\n\\boxed{0}"
)
NO_LEADING = "No, the model names 1 cane, not the umbrella in image 1."
HEDGING = "It could be either; I cannot tell whether a parasol counts as an umbrella, so 1 or 0."

MakeJudge = Callable[..., OpenAnswerJudge]


@pytest.fixture
def judge_server() -> Iterator[ScriptedMLLM]:
    with ScriptedMLLM() as server:
        yield server


@pytest.fixture
async def make_judge(judge_server: ScriptedMLLM) -> AsyncIterator[MakeJudge]:
    clients: list[MLLMClient] = []

    def make(max_tokens: int = 321) -> OpenAnswerJudge:
        client = MLLMClient([Backend(judge_server.base_url, "key", "test-judge")], timeout_s=5, max_retries=0)
        clients.append(client)
        return OpenAnswerJudge(client, max_tokens, SETTING)

    yield make
    for client in clients:
        await client.aclose()


def row(answer: str, *, scorer: str | None = None, meta: dict[str, object] | None = None) -> ManifestRow:
    return ManifestRow(
        id="r0", task="perception", image="0.png", question=QUESTION, answer=answer, scorer=scorer, meta=meta
    )


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (YES_BOXED, Verdict(True, "yes")),
        (YES_EXPLAINED, Verdict(True, "yes")),
        (NO_THINKING, Verdict(False, "no")),
        (NO_LEADING, Verdict(False, "no")),
        (HEDGING, Verdict(None, "hedge")),
    ],
)
async def test_the_judge_reads_real_replies(
    judge_server: ScriptedMLLM, make_judge: MakeJudge, reply: str, verdict: Verdict
) -> None:
    judge_server.responder = lambda request: reply
    assert await make_judge().ask(question=QUESTION, answer_text="Answer: a red umbrella", expected="x") == (
        verdict,
        1,
    )


async def test_the_judge_sees_only_the_final_answer_with_the_callers_budget(
    judge_server: ScriptedMLLM, make_judge: MakeJudge
) -> None:
    judge_server.responder = lambda request: YES_EXPLAINED
    verdict, requests = await make_judge(max_tokens=777).ask(
        question=QUESTION,
        answer_text="<think>maybe a cane</think>He holds an umbrella.\n\nAnswer: a red umbrella",
        expected="an umbrella",
    )
    assert verdict == Verdict(True, "yes") and requests == 1
    (request,) = judge_server.requests
    assert (
        request.temperature == 0 and request.max_tokens == 777 and request.image_count == 0 and request.n == 1
    )
    assert f"Question: {QUESTION}" in request.text
    assert "Model's answer: a red umbrella" in request.text and "cane" not in request.text
    assert "Reference answer: an umbrella" in request.text


async def test_a_reply_cut_before_its_verdict_is_incomplete_never_a_no(
    judge_server: ScriptedMLLM, make_judge: MakeJudge
) -> None:
    judge_server.responder = lambda request: Reply(
        content="<think>\nThe reference says umbrella and the model says", finish_reason="length"
    )
    with pytest.raises(MLLMIncomplete, match=rf"max_tokens=321.*{SETTING}") as caught:
        await make_judge().ask(question=QUESTION, answer_text="Answer: parasol", expected="an umbrella")
    assert "test-judge" in caught.value.backend

    # cut after it stated the verdict: used
    judge_server.responder = lambda request: Reply(content="1. Both name the same", finish_reason="length")
    verdict, _ = await make_judge().ask(
        question=QUESTION, answer_text="Answer: parasol", expected="an umbrella"
    )
    assert verdict == Verdict(True, "yes")


async def test_rules_decide_first_and_never_ask_the_judge(
    judge_server: ScriptedMLLM, make_judge: MakeJudge
) -> None:
    judge = make_judge()
    right = await grade_answer(
        "Looking closely, it is B.\n\\boxed{B}", row("B", scorer="option"), judge=judge
    )
    wrong = await grade_answer("\\boxed{30}", row("42"), judge=judge)
    assert (right.correct, right.match.rule, right.verdict, right.requests) == (True, "option", None, 0)
    assert (wrong.correct, wrong.match.rule, wrong.undecided) == (False, "numeric", False)
    assert judge_server.requests == []


@pytest.mark.parametrize(
    ("reply", "correct", "cause"),
    [(YES_BOXED, True, "yes"), (NO_THINKING, False, "no"), (HEDGING, False, "hedge")],
)
async def test_an_open_answer_goes_to_the_judge_and_only_a_clear_yes_is_correct(
    judge_server: ScriptedMLLM, make_judge: MakeJudge, reply: str, correct: bool, cause: str
) -> None:
    judge_server.responder = lambda request: reply
    graded = await grade_answer(
        "<think>a bike?</think>It is a bike.\n\n\\boxed{a red bike by the wall}",
        row("a red bicycle leaning on the wall"),
        judge=make_judge(),
    )
    assert graded.match.correct is None and graded.match.rule == "open"
    assert (graded.correct, graded.verdict and graded.verdict.cause, graded.requests) == (correct, cause, 1)
    assert not graded.undecided
    (request,) = judge_server.requests
    assert "Model's answer: a red bike by the wall" in request.text and "a bike?" not in request.text


async def test_without_a_judge_an_open_answer_is_undecided_and_wrong() -> None:
    graded = await grade_answer("\\boxed{a red bike}", row("a red bicycle leaning on the wall"), judge=None)
    assert graded == Graded(False, graded.match) and graded.undecided
    # scorer="judge" always asks; without a judge it is undecided as well
    assert (await grade_answer("\\boxed{B}", row("B", scorer="judge"), judge=None)).undecided


async def test_a_row_without_an_answer_is_a_value_error() -> None:
    class Query:  # a reward query's shape: the answer is optional there
        question, answer, scorer, meta = QUESTION, None, None, None

    with pytest.raises(ValueError, match="no expected answer"):
        await grade_answer("\\boxed{B}", Query(), judge=None)
