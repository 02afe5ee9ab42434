"""Issue 21 (items 1 and 5) through POST /answer: an empty MLLM reply is a 503, never a 200 with an empty
answer, and an oversized reply cannot blow up the response.

Real HTTP, the tiny editor, a real Redis; the MLLM is the scripted test server, whose failure injection sends
``"content": null``, ``"choices": []``, blank text and 10 MB replies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.editor.test_api import assert_error
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.verifier.conftest import Script, VerifierFactory, kind_of
from tests.verifier.test_answer import ask

CUT = "characters cut"
VERDICT = "The edit traces the path from the green start to the right exit, as asked. \\boxed{1}"


@pytest.fixture
def judge() -> Iterator[ScriptedMLLM]:
    """The judge J on its own backend, so a test scripts the verification stage by server, not by prompt."""
    server = ScriptedMLLM(lambda request: VERDICT).start()
    yield server
    server.stop()


@pytest.fixture
def with_judge(verifier: VerifierFactory, judge: ScriptedMLLM) -> VerifierFactory:
    def launch(**overrides: object) -> str:
        return verifier(judge_base_url=[judge.base_url], judge_model="test-judge", **overrides)

    return launch


@pytest.mark.parametrize("mode", ["direct", "evr", "edit"])
@pytest.mark.parametrize(
    "empty",
    [Reply(content=None), Reply(content=[]), Reply(content=" \n ")],
    ids=["null", "no choices", "blank"],
)
def test_an_empty_reply_is_503_naming_the_backend_never_an_empty_answer(
    verifier: VerifierFactory, mllm: ScriptedMLLM, mode: str, empty: Reply
) -> None:
    mllm.responder = lambda request: empty
    response = ask(verifier(), mode=mode)
    error = assert_error(response, 503, "mllm_unavailable")
    assert f"test-vlm at {mllm.base_url}" in error["message"]
    assert ("no choices" if empty.content == [] else "empty content") in error["message"]
    assert response.headers["retry-after"]


def test_a_null_verdict_in_evr_is_503_not_unreliable(
    with_judge: VerifierFactory, judge: ScriptedMLLM
) -> None:
    judge.responder = lambda request: Reply(content=None)
    error = assert_error(ask(with_judge(), mode="evr"), 503, "mllm_unavailable")
    assert f"test-judge at {judge.base_url}: answered with empty content" in error["message"]
    assert len(judge.requests) == 1


def test_a_null_answer_on_the_edit_in_evr_is_503(
    with_judge: VerifierFactory, mllm: ScriptedMLLM, judge: ScriptedMLLM, script: Script
) -> None:
    """The edit was verified, then reasoning on it came back null: 503, not the speculative answer as if the
    edit had been rejected, nor an empty answer."""
    mllm.responder = lambda request: (
        Reply(content=None) if kind_of(request) == "reason_edit" else script(request)
    )
    error = assert_error(ask(with_judge(), mode="evr"), 503, "mllm_unavailable")
    assert f"test-vlm at {mllm.base_url}: answered with empty content" in error["message"]
    assert len(judge.requests) == 1


def test_a_null_reply_is_retried_and_the_answer_comes(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script
) -> None:
    mllm.reply_next(Reply(content=None))
    response = ask(verifier(mllm_max_retries=1), mode="direct")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "A" and body["raw_answer"] == script.direct_answer
    assert body["mllm_calls"] == 2 == len(mllm.requests)  # the null reply and its retry


def rambling(conclusion: str) -> str:
    """A ~10 MB reply from a thinking model that lost its way, with its conclusion at the very end."""
    return (
        "<think>\n" + "Tracing the corridor again from the start. " * 240_000 + "\n</think>\n\n" + conclusion
    )


@pytest.mark.parametrize("mode", ["direct", "evr"])
def test_a_10_mb_reply_gives_a_bounded_response_with_the_cut_marked(
    with_judge: VerifierFactory, mllm: ScriptedMLLM, judge: ScriptedMLLM, mode: str
) -> None:
    replies = {
        "reason_edit": rambling("Following the drawn path, the exit is B.\n\\boxed{B}"),
        "reason_direct": rambling("It looks like A.\n\\boxed{A}"),
    }
    verdict = rambling(VERDICT)
    assert all(len(reply) > 10_000_000 for reply in [verdict, *replies.values()])

    def respond(request: RecordedRequest) -> str:
        return replies[kind_of(request)]

    mllm.responder = respond
    judge.responder = lambda request: verdict
    response = ask(with_judge(), mode=mode, timeout=120)
    assert response.status_code == 200, response.text[:500]
    assert len(response.content) < 200_000
    body = response.json()
    assert CUT in body["raw_answer"] and len(body["raw_answer"]) <= 32_768
    if mode == "direct":
        assert body["answer"] == "A" and body["raw_answer"].endswith("\\boxed{A}")
    else:
        assert body["answer"] == "B" and body["used_edit"] is True  # the verdict and the answer at the tail
        assert body["raw_answer"].endswith("\\boxed{B}")
        assert CUT in body["verification"]["raw"] and body["verification"]["reliable"] is True
        assert body["baseline_answer"] == "A"
