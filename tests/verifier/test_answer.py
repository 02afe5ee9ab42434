"""POST /answer over real HTTP: the tiny editor, a real Redis, and the scripted test MLLM."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.editor.test_api import assert_error, png_b64
from tests.support.mllm_server import Reply, ScriptedMLLM
from tests.support.redis_server import free_port
from tests.verifier.conftest import Script, VerifierFactory, requests_of

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"


def ask(url: str, timeout: float = 60, **overrides: object) -> httpx.Response:
    body = {"image": png_b64(80, 64), "question": QUESTION, "task": "logic", **overrides}
    return httpx.post(f"{url}/answer", json=body, timeout=timeout)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_reliable_edit_is_used_and_the_model_sees_both_images(
    verifier: VerifierFactory, mllm: ScriptedMLLM
) -> None:
    response = ask(verifier(), return_images=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "B" and body["used_edit"] is True and body["task"] == "logic"
    assert body["verification"] == {"reliable": True, "raw": "1", "cause": "yes"}
    assert body["baseline_answer"] == "A", "the speculative direct answer is reported as the baseline"
    assert body["raw_answer"].startswith("Following the drawn path")
    assert body["fallback_reason"] is None and body["routed"] is False
    assert body["mllm_calls"] == 3  # judge + reason on the edit + speculative direct answer
    assert decode(body["edited_image"]).size == (80, 64)
    for stage in ("edit_ms", "verify_ms", "reason_edit_ms", "total_ms"):
        assert body["timings"][stage] > 0

    (judge,) = requests_of(mllm, "judge")
    (reason,) = requests_of(mllm, "reason_edit")
    for request in (judge, reason):
        assert request.image_count == 2 and request.model == "test-vlm"
        assert QUESTION in request.text
    # the original goes first, the edit second — and the edit is what the editor returned
    original, edited = reason.images
    assert decode(original.split(",", 1)[1]).size == (80, 64)
    assert edited.split(",", 1)[1] == body["edited_image"]
    assert "helper view" in reason.text


@pytest.mark.parametrize(
    ("verdict", "cause"),
    [("0", "no"), ("No.", "no"), ("I cannot tell", "hedge"), ("The second image shows a red line.", "none")],
)
def test_rejected_or_unparseable_verdict_falls_back_to_the_original(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script, verdict: str, cause: str
) -> None:
    script.verdict = verdict
    body = ask(verifier()).json()
    assert body["answer"] == "A" and body["used_edit"] is False
    assert body["verification"] == {"reliable": False, "raw": verdict, "cause": cause}
    assert body["fallback_reason"].startswith("unreliable")
    assert body["baseline_answer"] is None and body["edited_image"] is None
    # the judge and the direct answer; reasoning on the edit, started with the judge, is not charged
    # (tests/verifier/test_speculation.py)
    assert body["mllm_calls"] == 2
    (direct,) = requests_of(mllm, "reason_direct")
    assert direct.image_count == 1


def test_sequential_fallback_when_speculation_is_off(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script
) -> None:
    script.verdict = "0"
    body = ask(verifier(verifier_speculative=False, verifier_speculative_reasoning=False)).json()
    assert body["answer"] == "A" and body["mllm_calls"] == 2
    # judge first, then (only after the rejection) the direct answer
    assert [request.image_count for request in mllm.requests] == [2, 1]


def test_direct_mode_is_one_call_and_no_edit(verifier: VerifierFactory, mllm: ScriptedMLLM) -> None:
    body = ask(verifier(), mode="direct").json()
    assert body["answer"] == "A" and body["used_edit"] is False and body["task"] == "none"
    assert body["verification"] is None and body["mllm_calls"] == 1
    assert "edit_ms" not in body["timings"]
    assert len(mllm.requests) == 1 and mllm.requests[0].image_count == 1


def test_edit_mode_reasons_on_the_edit_without_verifying(
    verifier: VerifierFactory, mllm: ScriptedMLLM
) -> None:
    body = ask(verifier(), mode="edit").json()
    assert body["answer"] == "B" and body["used_edit"] is True and body["verification"] is None
    assert requests_of(mllm, "judge") == [] and requests_of(mllm, "reason_direct") == []
    assert body["mllm_calls"] == 1


def test_auto_routing_picks_a_family_once_per_question(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script
) -> None:
    url = verifier()
    script.route = "I would say **logic**."
    first = ask(url, task="auto").json()
    assert first["task"] == "logic" and first["routed"] is True and first["used_edit"] is True
    second = ask(url, task="auto").json()
    assert second["task"] == "logic"
    (route,) = requests_of(mllm, "route")  # the second decision came from the cache
    assert route.image_count == 0 and QUESTION in route.text
    assert first["mllm_calls"] == 4 and second["mllm_calls"] == 3
    metrics = httpx.get(f"{url}/metrics").text
    assert 'etchr_verifier_route_total{source="model",task="logic"} 1.0' in metrics
    assert 'etchr_verifier_route_total{source="cache",task="logic"} 1.0' in metrics


@pytest.mark.parametrize("reply", ["none", "Nothing fits. none", "¯\\_(ツ)_/¯"])
def test_auto_routing_to_none_answers_directly_without_the_editor(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script, reply: str
) -> None:
    script.route = reply
    body = ask(verifier(), task="auto", question=f"{QUESTION} [{reply}]").json()
    assert body["task"] == "none" and body["used_edit"] is False and body["answer"] == "A"
    assert body["mllm_calls"] == 2 and "edit_ms" not in body["timings"]
    assert requests_of(mllm, "judge") == []


def test_editor_down_still_answers_directly(verifier: VerifierFactory) -> None:
    body = ask(verifier(editor_url=f"http://127.0.0.1:{free_port()}")).json()
    assert body["answer"] == "A" and body["used_edit"] is False
    assert body["fallback_reason"].startswith("editor_down")


def test_editor_past_its_deadline_still_answers(
    verifier: VerifierFactory, redis_server, key_prefix: str
) -> None:
    from etchr.settings import EditorSettings
    from etchr_editor.service import create_app
    from tests.support.servers import UvicornThread

    idle_editor = UvicornThread(  # a front without workers: edits never finish
        create_app(
            EditorSettings(
                redis_url=redis_server.url,
                redis_prefix=f"{key_prefix}-e",
                editor_worker=False,
                editor_deadline_s=1.5,  # the abandoned request ends soon after the verifier gave up on it
            )
        )
    ).start()
    try:
        body = ask(verifier(editor_url=idle_editor.url, verifier_edit_timeout_s=0.5)).json()
        assert body["answer"] == "A" and body["used_edit"] is False
        assert body["fallback_reason"].startswith("editor_timeout")
    finally:
        idle_editor.stop()


def test_mllm_down_is_503_naming_the_backend(verifier: VerifierFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    url = verifier(mllm_base_url=[dead])
    response = ask(url)
    error = assert_error(response, 503, "mllm_unavailable")
    assert dead in error["message"]
    assert response.headers["retry-after"]


def test_mllm_failing_is_503_not_a_made_up_answer(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script
) -> None:
    mllm.responder = lambda request: Reply(status=500, content="boom")
    assert_error(ask(verifier(), mode="direct"), 503, "mllm_unavailable")
    assert_error(ask(verifier()), 503, "mllm_unavailable")


def test_no_mllm_configured_is_503_saying_what_to_set(verifier: VerifierFactory) -> None:
    url = verifier(mllm_base_url=[])
    for mode in ("evr", "edit", "direct"):
        error = assert_error(ask(url, mode=mode), 503, "mllm_not_configured")
        assert "ETCHR_MLLM_BASE_URL" in error["message"]
    exposition = httpx.get(f"{url}/metrics").text
    assert 'etchr_verifier_stage_seconds_count{stage="edit"}' not in exposition  # no edit was asked for
    ready = assert_error(httpx.get(f"{url}/readyz"), 503, "not_ready")
    assert "ETCHR_MLLM_BASE_URL" in ready["message"]


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"image": "%%%"}, 400),
        ({"image": png_b64(600, 600)}, 400),
        ({"task": "astrology"}, 422),
        ({"mode": "guess"}, 422),
        ({"question": ""}, 422),
        ({"return_images": "sometimes"}, 422),
    ],
)
def test_bad_input_is_4xx_and_costs_no_mllm_call(
    verifier: VerifierFactory, mllm: ScriptedMLLM, overrides: dict[str, object], status: int
) -> None:
    assert_error(ask(verifier(), **overrides), status)
    assert mllm.requests == []


def test_auth(verifier: VerifierFactory) -> None:
    url = verifier(api_keys=["secret"])
    assert_error(ask(url), 401, "unauthorized")
    ok = httpx.post(
        f"{url}/answer",
        json={"image": png_b64(64, 64), "question": QUESTION, "task": "none"},
        headers={"authorization": "Bearer secret"},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text


def test_metrics_count_stages_verdicts_and_fallbacks(verifier: VerifierFactory, script: Script) -> None:
    url = verifier()
    ask(url)
    script.verdict = "0"
    ask(url)
    metrics = httpx.get(f"{url}/metrics").text
    for line in (
        'etchr_verifier_verdicts_total{verdict="reliable"} 1.0',
        'etchr_verifier_verdicts_total{verdict="unreliable"} 1.0',
        'etchr_verifier_fallbacks_total{reason="unreliable"} 1.0',
        'etchr_verifier_mllm_calls_total{stage="verify"} 2.0',
        'etchr_verifier_answers_total{mode="evr",used_edit="true"} 1.0',
    ):
        assert line in metrics, line
    assert 'etchr_verifier_stage_seconds_count{stage="edit"} 2.0' in metrics


def user_turn(image_url: str, text: str = QUESTION) -> dict[str, object]:
    return {
        "role": "user",
        "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}],
    }


def test_openai_chat_facade(verifier: VerifierFactory, mllm: ScriptedMLLM) -> None:
    client = openai.OpenAI(base_url=f"{verifier()}/v1", api_key="unused", max_retries=0)
    image_url = "data:image/png;base64," + png_b64(80, 64)
    completion = client.chat.completions.create(
        model="etchr-logic",
        messages=[{"role": "system", "content": "You are helpful."}, user_turn(image_url)],  # type: ignore[list-item]
    )
    assert completion.choices[0].message.content.startswith("Following the drawn path")
    assert completion.object == "chat.completion"
    etchr = completion.model_extra["etchr"]
    assert etchr["used_edit"] is True and etchr["answer"] == "B" and etchr["task"] == "logic"

    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(model="etchr", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError, match="remote URLs"):
        client.chat.completions.create(model="etchr", messages=[user_turn("http://example.invalid/x.png")])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.chat.completions.create(model="etchr-astrology", messages=[user_turn(image_url)])  # type: ignore[list-item]
