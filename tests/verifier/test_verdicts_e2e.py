"""POST /answer (evr) end to end with judges that word their verdicts the way real models do.

The test MLLM recognises the judge call by its exact prompt (whatever the judge prompt's wording is), so
these tests follow the prompts in etchr.tasks rather than a copy of them.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from etchr.manifest import ManifestRow, write_manifest
from etchr.mllm import Backend, MLLMClient
from etchr.prompts import AnswerPrompts
from etchr.tasks import TaskRegistry
from etchr_tools.eval.harness import EvalRun, Evaluator, load_results
from tests.editor.test_api import assert_error, png_b64
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.verifier.conftest import VerifierFactory

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
JUDGE_PROMPT = TaskRegistry.default().judge_prompt("logic", QUESTION)
ROUTE_PROMPT = AnswerPrompts().routing(QUESTION, TaskRegistry.default())
EDIT_ANSWER = "Following the drawn path in the second image, it ends at the right exit.\n\n\\boxed{B}"
DIRECT_ANSWER = "The maze is hard to read; the left exit looks closer.\n\n\\boxed{A}"


def stage_of(request: RecordedRequest) -> str:
    if request.text == JUDGE_PROMPT:
        return "verify"
    if request.text == ROUTE_PROMPT:
        return "route"
    return "reason_edit" if request.image_count == 2 else "reason_direct"


@dataclass
class Judge:
    """The test MLLM's script: the judge's reply, and the reasoning replies (each a Reply or a text)."""

    verdict: Reply | str = "1"
    replies: dict[str, Reply | str] = field(
        default_factory=lambda: {"route": "logic", "reason_edit": EDIT_ANSWER, "reason_direct": DIRECT_ANSWER}
    )

    def __call__(self, request: RecordedRequest) -> Reply | str:
        stage = stage_of(request)
        return self.verdict if stage == "verify" else self.replies[stage]


@pytest.fixture
def judge() -> Judge:
    return Judge()


@pytest.fixture
def mllm(judge: Judge) -> Iterator[ScriptedMLLM]:
    """Overrides the verifier conftest's test MLLM (the ``verifier`` fixture is wired to it)."""
    server = ScriptedMLLM(judge).start()
    yield server
    server.stop()


def ask(url: str, task: str = "logic") -> httpx.Response:
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": task, "mode": "evr"}
    return httpx.post(f"{url}/answer", json=body, timeout=60)


# (judge reply, cause, the edit is used)
WORDINGS = [
    ("1", "yes", True),
    ("Yes, the red line runs from the green start to the right exit without crossing a wall.", "yes", True),
    ("The path in image 2 reaches the exit in 6 steps, never crossing a wall.\n\n\\boxed{1}", "yes", True),
    (
        "<think>\nStep 1 goes right, step 2 down... no walls crossed. So 1.\n</think>\n\n**Verdict:** 1",
        "yes",
        True,
    ),
    # the four replies of issue 15: all once read as reliable
    ("No, there is no red box in image 1.", "no", False),
    ("0. The image shows 1 red box, but it does not surround the cup.", "no", False),
    ("0 (the drawn path crosses a wall in step 1)", "no", False),
    ("0\n\nThe second image has 2 boxes and only 1 of them is near the glove.", "no", False),
    ("Yes, a path is drawn. But it crosses the wall in row 2, so the answer is 0.", "disagree", False),
    ("I cannot tell whether the line in image 2 crosses a wall at this resolution.", "hedge", False),
    ("The second image shows 1 red line through 4 cells of row 0.", "none", False),
]


def test_every_wording_yields_the_verdict_it_means(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: Judge
) -> None:
    url = verifier()
    for reply, cause, used in WORDINGS:
        judge.verdict = reply
        response = ask(url)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["verification"] == {"reliable": used, "raw": reply, "cause": cause}, reply
        assert body["used_edit"] is used, reply
        assert body["answer"] == ("B" if used else "A"), reply
        assert body["truncated"] == []
        if used:
            assert body["fallback_reason"] is None
        else:
            assert body["fallback_reason"].startswith("unreliable: "), reply
    verify = [request for request in mllm.requests if stage_of(request) == "verify"]
    assert len(verify) == len(WORDINGS)
    assert all(request.image_count == 2 and request.temperature == 0 for request in verify)

    metrics = httpx.get(f"{url}/metrics").text
    for cause, count in (("yes", 4), ("no", 4), ("disagree", 1), ("hedge", 1), ("none", 1)):
        assert f'etchr_verifier_verdict_causes_total{{cause="{cause}"}} {count}.0' in metrics, cause
    assert 'etchr_verifier_verdicts_total{verdict="unparseable"} 3.0' in metrics


def test_fallback_reason_says_why_the_edit_was_not_used(verifier: VerifierFactory, judge: Judge) -> None:
    url = verifier()
    reasons = {}
    for reply in ("No.", "Yes. Final answer: 0", "yes or no", "The path is drawn in red."):
        judge.verdict = reply
        reasons[reply] = ask(url).json()["fallback_reason"]
    assert "did not accept" in reasons["No."]
    assert "disagree" in reasons["Yes. Final answer: 0"]
    assert "hedged" in reasons["yes or no"]
    assert "no verdict" in reasons["The path is drawn in red."]


def test_token_budgets_reach_the_backend(verifier: VerifierFactory, mllm: ScriptedMLLM) -> None:
    assert ask(verifier()).status_code == 200
    budgets = {(stage_of(request), request.max_tokens) for request in mllm.requests}
    assert budgets == {("verify", 2048), ("reason_edit", 4096), ("reason_direct", 4096)}

    mllm.reset()
    assert ask(verifier(verifier_judge_max_tokens=64, verifier_max_tokens=512)).status_code == 200
    budgets = {(stage_of(request), request.max_tokens) for request in mllm.requests}
    assert budgets == {("verify", 64), ("reason_edit", 512), ("reason_direct", 512)}


def test_judge_cut_before_its_verdict_is_not_reliable(verifier: VerifierFactory, judge: Judge) -> None:
    url = verifier()
    judge.verdict = Reply(
        content="<think>\nThe first image is a maze. In the second image a red line starts at the green",
        finish_reason="length",
    )
    body = ask(url).json()
    assert body["verification"]["cause"] == "truncated" and body["verification"]["reliable"] is False
    assert body["used_edit"] is False and body["answer"] == "A"
    assert "ETCHR_VERIFIER_JUDGE_MAX_TOKENS" in body["fallback_reason"]
    assert body["truncated"] == ["verify"]

    # cut after the verdict was stated: used as usual, and still reported as cut
    judge.verdict = Reply(
        content="1. The red line goes from the start to the right exit and", finish_reason="length"
    )
    body = ask(url).json()
    assert body["verification"]["cause"] == "yes" and body["used_edit"] is True
    assert body["truncated"] == ["verify"]

    metrics = httpx.get(f"{url}/metrics").text
    assert 'etchr_verifier_truncated_total{outcome="unusable",stage="verify"} 1.0' in metrics
    assert 'etchr_verifier_truncated_total{outcome="used",stage="verify"} 1.0' in metrics
    assert 'etchr_verifier_verdict_causes_total{cause="truncated"} 1.0' in metrics


def test_reasoning_cut_before_an_answer_is_502_naming_the_backend_and_the_setting(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: Judge
) -> None:
    url = verifier()
    judge.replies["reason_edit"] = Reply(
        content="<think>\nThe red line leaves the start, turns down at step 2, then", finish_reason="length"
    )
    error = assert_error(ask(url), 502, "mllm_rejected")
    assert mllm.base_url in error["message"] and "ETCHR_VERIFIER_MAX_TOKENS" in error["message"]

    # a cut reply that stated its answer before the cut is used, and listed as cut
    judge.replies["reason_edit"] = Reply(
        content="The path ends at the right exit.\n\n\\boxed{B}\n\nTo double-check, step 1 goes",
        finish_reason="length",
    )
    body = ask(url).json()
    assert body["answer"] == "B" and body["used_edit"] is True
    assert body["truncated"] == ["reason_edit"]

    # the fallback answer (the judge said no) cut with no answer is a 502 too
    judge.verdict = "0"
    judge.replies["reason_direct"] = Reply(
        content="Looking at the maze, the start is at", finish_reason="length"
    )
    assert_error(ask(url), 502, "mllm_rejected")

    metrics = httpx.get(f"{url}/metrics").text
    assert 'etchr_verifier_truncated_total{outcome="unusable",stage="reason_edit"} 1.0' in metrics
    assert 'etchr_verifier_truncated_total{outcome="used",stage="reason_edit"} 1.0' in metrics
    assert 'etchr_verifier_truncated_total{outcome="unusable",stage="reason_direct"}' in metrics


def test_routing_reply_cut_before_a_family_answers_directly_and_is_not_cached(
    verifier: VerifierFactory, mllm: ScriptedMLLM, judge: Judge
) -> None:
    url = verifier()
    judge.replies["route"] = Reply(
        content="<think>\nThe question mentions a path from a start, so it could be logic, or",
        finish_reason="length",
    )
    for _ in range(2):
        body = ask(url, task="auto").json()
        assert body["task"] == "none" and body["used_edit"] is False and body["answer"] == "A"
        assert body["truncated"] == ["route"]
    routes = [request for request in mllm.requests if stage_of(request) == "route"]
    assert len(routes) == 2, "a cut reply naming no family is not remembered"
    assert all(request.max_tokens == 2048 for request in routes)  # the judge's budget, not a word's worth

    judge.replies["route"] = "<think>\nA path from a start to an exit: a maze.\n</think>\n\nlogic"
    assert ask(url, task="auto").json()["task"] == "logic"
    assert (
        'etchr_verifier_truncated_total{outcome="unusable",stage="route"} 2.0'
        in httpx.get(f"{url}/metrics").text
    )


# ------------------------------------------------------------------------- etchr eval's open-answer judge


def open_answer_manifest(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / "0.png").write_bytes(base64.b64decode(png_b64(64, 64)))
    row = ManifestRow(
        id="bike",
        task="perception",
        image="images/0.png",
        question="What is leaning against the wall?",
        answer="a red bicycle leaning on the wall",
    )
    write_manifest(root / "manifest.jsonl", [row])
    return root / "manifest.jsonl"


@pytest.mark.parametrize(
    ("judge_reply", "cut", "correct"),
    [
        ("The model's answer names the same red bicycle. Therefore: 1", False, True),
        ("<think>\nbike = bicycle, same colour.\n</think>\n\n\\boxed{1}", False, True),
        ("0 (the model says 1 bike but never says it is red)", False, False),
        ("Yes, both name a bicycle. But the model omits the colour, so the answer is 0.", False, False),
        ("<think>\nThe reference says a red bicycle and the model says", True, None),  # not recorded
    ],
)
def test_eval_judges_open_answers_through_the_same_reader(
    verifier: VerifierFactory, judge: Judge, tmp_path: Path, judge_reply: str, cut: bool, correct: bool | None
) -> None:
    judge.replies["reason_direct"] = "It is a bike.\n\nAnswer: a red bike against the wall"
    manifest = open_answer_manifest(tmp_path / "corpus")
    out = tmp_path / "eval"
    url = verifier()

    async def run() -> EvalRun:
        with ScriptedMLLM(
            lambda request: Reply(content=judge_reply, finish_reason="length" if cut else "stop")
        ) as j:
            client = MLLMClient([Backend(j.base_url, "key", "test-judge")], timeout_s=5, max_retries=0)
            evaluator = Evaluator(url, judge=client, judge_max_tokens=300)
            try:
                result = await evaluator.run(manifest, ["direct"], out, progress=False)
            finally:
                await evaluator.aclose()
                await client.aclose()
            (request,) = j.requests
            assert request.max_tokens == 300 and "Model's answer: a red bike against the wall" in request.text
            return result

    result = asyncio.run(run())
    if correct is None:
        assert result.recorded == 0 and len(result.failed) == 1
        assert "ETCHR_EVAL_JUDGE_MAX_TOKENS" in result.failed[0]
        return
    assert (result.recorded, result.failed) == (1, [])
    (row,) = load_results(out / "results.jsonl")
    assert row.correct is correct and row.undecided is False and row.rule == "open"
