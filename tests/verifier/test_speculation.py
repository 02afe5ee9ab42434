"""Speculative reasoning with the edit (ETCHR_VERIFIER_SPECULATIVE_REASONING): U reasons with the edit while
the judge reads it. Real HTTP, the tiny editor, a real Redis, the scripted test MLLM.

What is proven, without timing anything: the response is the one the strict order (judge first) gives for
the same MLLM replies; a reasoning call that a "no" made useless is cancelled, never charged to the answer's
``mllm_calls``, and counted in the speculative metrics; the strict order asks U only after the judge's yes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.editor.test_api import assert_error, png_b64
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.verifier.conftest import VerifierFactory, kind_of, requests_of

QUESTION = "Which cup holds the spoon? (A) the red cup (B) the blue cup"
YES = "The edit boxes the right cup.\n\n\\boxed{1}"
NO = (
    "<think>\nThe box in the second image surrounds the saucer, not a cup, and the spoon is outside it.\n"
    "</think>\n\n\\boxed{0}"
)
EDIT_ANSWER = "The boxed cup is the blue one and the spoon rests in it.\n\n\\boxed{B}"
DIRECT_ANSWER = "The spoon seems to lean on the red cup.\n\n\\boxed{A}"
# The response fields speculation must not change (timings only by their stages: durations differ).
CONTENT = (
    "answer",
    "raw_answer",
    "used_edit",
    "verification",
    "task",
    "routed",
    "edited_image",
    "baseline_answer",
    "fallback_reason",
    "truncated",
    "mllm_calls",
)


def ask(url: str) -> httpx.Response:
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "perception", "mode": "evr"}
    return httpx.post(f"{url}/answer", json=body, timeout=60)


def replying(replies: dict[str, Reply | str]) -> Callable[[RecordedRequest], Reply | str]:
    return lambda request: replies[kind_of(request)]


def metric(url: str, name: str, **labels: str) -> float:
    """A sample's value in the app's /metrics (0 when the labelled series was never touched)."""
    wanted = name + "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def speculative(url: str, stage: str, outcome: str) -> float:
    return metric(url, "etchr_verifier_speculative_calls_total", outcome=outcome, stage=stage)


def content(body: dict[str, object]) -> dict[str, object]:
    return {**{key: body[key] for key in CONTENT}, "stages": sorted(body["timings"])}  # type: ignore[arg-type]


# (the judge's reply, U's reply with the edit, whether the edit is used, the stages listed as cut)
SCENARIOS = {
    "yes": (YES, EDIT_ANSWER, True, []),
    "thinking no": (NO, EDIT_ANSWER, False, []),
    "judge cut before a verdict": (
        Reply(
            content="<think>\nThe first image shows two cups; in the second the box", finish_reason="length"
        ),
        EDIT_ANSWER,
        False,
        ["verify"],
    ),
    # what U said with the edit matters only after a yes: cut, or failing, it must not show after a no
    "no, and U cut before an answer": (
        NO,
        Reply(content="<think>\nThe boxed region holds a cup whose colour", finish_reason="length"),
        False,
        [],
    ),
    "no, and U failing": (NO, Reply(status=500, content="CUDA out of memory"), False, []),
    "yes, U cut after its answer": (
        YES,
        Reply(
            content="The spoon is in the blue cup.\n\n\\boxed{B}\n\nTo double-check the",
            finish_reason="length",
        ),
        True,
        ["reason_edit"],
    ),
}


@pytest.mark.parametrize(("verdict", "edit_reply", "used", "cut"), SCENARIOS.values(), ids=SCENARIOS.keys())
def test_answers_are_the_same_with_and_without_speculation(
    verifier: VerifierFactory,
    mllm: ScriptedMLLM,
    verdict: Reply | str,
    edit_reply: Reply | str,
    used: bool,
    cut: list[str],
) -> None:
    mllm.responder = replying({"judge": verdict, "reason_edit": edit_reply, "reason_direct": DIRECT_ANSWER})
    strict_url = verifier(verifier_speculative_reasoning=False)
    speculating_url = verifier(verifier_speculative_reasoning=True)
    strict, speculating = ask(strict_url), ask(speculating_url)
    assert strict.status_code == speculating.status_code == 200, (strict.text, speculating.text)
    assert content(speculating.json()) == content(strict.json())

    body = strict.json()
    assert body["used_edit"] is used and body["answer"] == ("B" if used else "A")
    assert body["truncated"] == cut
    assert body["mllm_calls"] == (3 if used else 2)  # judge, reasoning (on the edit or not), baseline if used
    assert body["fallback_reason"] is None if used else body["fallback_reason"].startswith("unreliable: ")
    # the speculating app asked U with the edit whatever the verdict; the strict one only after a yes
    assert metric(
        speculating_url, "etchr_verifier_speculative_calls_total", outcome="used", stage="reason_edit"
    ) == (1 if used else 0)
    thrown_away = sum(
        speculative(speculating_url, "reason_edit", o) for o in ("cancelled", "discarded", "failed")
    )
    assert thrown_away == (0 if used else 1)
    assert speculative(strict_url, "reason_edit", "used") == 0
    # etchr_verifier_mllm_calls_total sums what answers were charged: thrown-away speculation is not in it
    assert metric(speculating_url, "etchr_verifier_mllm_calls_total", stage="reason_edit") == (
        1 if used else 0
    )


@pytest.fixture
def judge() -> Iterator[ScriptedMLLM]:
    """J on its own backend, so its reply can wait for what U's backend has seen (no timing involved)."""
    server = ScriptedMLLM(lambda request: YES).start()
    yield server
    server.stop()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Block the judge's server thread until ``condition`` holds: an ordering, not a timing."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def with_judge(verifier: VerifierFactory, judge: ScriptedMLLM, **overrides: object) -> str:
    return verifier(judge_base_url=[judge.base_url], judge_model="test-judge", **overrides)


def test_a_slow_no_cancels_reasoning_still_in_flight_and_does_not_charge_it(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: ScriptedMLLM
) -> None:
    # U on the edit answers only when the server stops: if the verifier waited for it, the ask would time out
    mllm.responder = replying(
        {"reason_edit": Reply(delay_s=600, content=EDIT_ANSWER), "reason_direct": DIRECT_ANSWER}
    )

    def slow_no(request: RecordedRequest) -> str:
        wait_for(lambda: bool(requests_of(mllm, "reason_edit")), "U asked with the edit while J reads it")
        return NO

    judge.responder = slow_no
    url = with_judge(verifier, judge)
    response = ask(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["used_edit"] is False and body["answer"] == "A" and body["verification"]["cause"] == "no"
    assert body["mllm_calls"] == 2, "the judge and the direct answer; the cancelled call is not charged"
    assert "reason_edit_ms" not in body["timings"]
    assert len(requests_of(mllm, "reason_edit")) == 1  # it was really sent...
    assert speculative(url, "reason_edit", "cancelled") == 1  # ...and cancelled
    assert speculative(url, "reason_direct", "used") == 1
    assert metric(url, "etchr_verifier_speculative_extra_tokens_total", stage="reason_edit") == 0
    assert metric(url, "etchr_verifier_mllm_calls_total", stage="reason_edit") == 0


def test_a_reply_that_came_before_the_no_is_thrown_away_and_its_tokens_counted(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: ScriptedMLLM
) -> None:
    mllm.responder = replying({"reason_edit": EDIT_ANSWER, "reason_direct": DIRECT_ANSWER})

    def no_after_u_answered(request: RecordedRequest) -> str:
        wait_for(lambda: bool(requests_of(mllm, "reason_edit")) and mllm.in_flight == 0, "U's reply sent")
        time.sleep(0.5)  # let the verifier read it first (if it has not, the call counts as cancelled)
        return NO

    judge.responder = no_after_u_answered
    url = with_judge(verifier, judge)
    body = ask(url).json()
    assert body["used_edit"] is False and body["answer"] == "A" and body["mllm_calls"] == 2
    discarded = speculative(url, "reason_edit", "discarded")
    assert discarded + speculative(url, "reason_edit", "cancelled") == 1
    # the test MLLM reports one completion token per word of the reply
    tokens = metric(url, "etchr_verifier_speculative_extra_tokens_total", stage="reason_edit")
    assert tokens == discarded * len(EDIT_ANSWER.split())


def test_a_failing_judge_is_a_503_either_way_and_cancels_the_reasoning(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: ScriptedMLLM
) -> None:
    mllm.responder = replying(
        {"reason_edit": Reply(delay_s=600, content=EDIT_ANSWER), "reason_direct": DIRECT_ANSWER}
    )

    def failing(request: RecordedRequest) -> Reply:
        wait_for(lambda: bool(requests_of(mllm, "reason_edit")), "U asked with the edit while J reads it")
        return Reply(status=500, content="judge crashed")

    judge.responder = failing
    url = with_judge(verifier, judge)
    error = assert_error(ask(url), 503, "mllm_unavailable")
    assert "test-judge" in error["message"]
    assert speculative(url, "reason_edit", "cancelled") == 1


def test_the_strict_order_asks_u_with_the_edit_only_after_the_judges_yes(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: ScriptedMLLM
) -> None:
    mllm.responder = replying({"reason_edit": EDIT_ANSWER, "reason_direct": DIRECT_ANSWER})
    seen_when_judging: list[list[str]] = []

    def verdict(request: RecordedRequest) -> str:
        seen_when_judging.append([kind_of(r) for r in mllm.requests])
        return YES if len(seen_when_judging) == 1 else NO

    judge.responder = verdict
    url = with_judge(verifier, judge, verifier_speculative_reasoning=False)
    accepted = ask(url).json()
    assert accepted["used_edit"] is True and accepted["answer"] == "B" and accepted["mllm_calls"] == 3
    assert "reason_edit" not in seen_when_judging[0], "U was asked with the edit before the judge answered"
    assert len(requests_of(mllm, "reason_edit")) == 1  # asked after the yes

    rejected = ask(url).json()
    assert rejected["used_edit"] is False and rejected["answer"] == "A" and rejected["mllm_calls"] == 2
    assert len(requests_of(mllm, "reason_edit")) == 1, "after a no, U is never asked with the edit"
    assert speculative(url, "reason_edit", "cancelled") == speculative(url, "reason_edit", "used") == 0
