"""Edit-Verify-Reason: the editor proposes a helper view, the judge verifies it, the MLLM answers.

Modes (docs/api.md): ``evr`` (with fallback to the original image), ``edit`` (no verification), ``direct``.
In ``evr`` the direct answer on the original is started concurrently with the edit (speculative fallback),
so a rejected or failed edit costs no extra wait; when the edit is used, that answer is the baseline.
MLLM failures propagate (the API turns them into 503/502); editor failures only mean "answer without it".

Replies cut at max_tokens (finish_reason "length") are listed in the response's ``truncated`` and counted. A
cut judge reply still holding a verdict is read as usual, one without reads as not reliable (cause
``truncated``); a cut reasoning reply with no stated answer is an :class:`MLLMIncomplete` (502) naming the
setting to raise, never an answer guessed from half-finished reasoning.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from PIL import Image

from etchr.answers import explicit_final_answer, extract_final_answer
from etchr.clients.editor import EditorClient, EditorUnavailable
from etchr.imaging import encode_png
from etchr.mllm import MLLMClient, MLLMError, user_message
from etchr.prompts import AnswerPrompts
from etchr.protocol.answer import AnswerRequest, AnswerResponse, Verification
from etchr.tasks import TaskRegistry
from etchr.verdicts import Cause, incomplete_reply, read_verdict
from etchr_verifier.metrics import VerifierMetrics
from etchr_verifier.routing import NONE, TaskRouter

T = TypeVar("T")


@dataclass
class _Trace:
    """Per-request bookkeeping: stage timings (ms) and MLLM requests made."""

    metrics: VerifierMetrics
    timings: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    truncated: list[str] = field(default_factory=list)  # stages whose reply was cut at max_tokens

    def cut(self, stage: str, *, usable: bool) -> None:
        """A reply cut at max_tokens: listed in the response, counted by whether it was still usable."""
        self.list_cut(stage)
        self.metrics.truncated.labels(stage, "used" if usable else "unusable").inc()

    def list_cut(self, stage: str) -> None:
        """List a stage whose reply was cut (once), for a cut another component already counted."""
        if stage not in self.truncated:
            self.truncated.append(stage)

    async def timed(self, stage: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await work
        finally:
            seconds = time.perf_counter() - started
            self.timings[f"{stage}_ms"] = round(seconds * 1000, 2)
            self.metrics.stage_seconds.labels(stage).observe(seconds)


@dataclass(frozen=True)
class _Reasoned:
    raw: str
    answer: str


class EVRPipeline:
    """Everything ``POST /answer`` does once the input is validated; components are passed in."""

    def __init__(
        self,
        *,
        mllm: MLLMClient,
        judge: MLLMClient,
        editor: EditorClient,
        router: TaskRouter,
        tasks: TaskRegistry,
        prompts: AnswerPrompts,
        metrics: VerifierMetrics,
        speculative: bool,
        max_tokens: int,
        judge_max_tokens: int,
        temperature: float,
    ) -> None:
        self.mllm = mllm
        self.judge = judge
        self.editor = editor
        self.router = router
        self.tasks = tasks
        self.prompts = prompts
        self.metrics = metrics
        self.speculative = speculative
        self.max_tokens = max_tokens
        self.judge_max_tokens = judge_max_tokens
        self.temperature = temperature

    async def answer(self, request: AnswerRequest, image: Image.Image, *, request_id: str) -> AnswerResponse:
        self.mllm.require_configured()  # every mode reasons with U: fail before asking for a GPU edit
        trace = _Trace(self.metrics)
        started = time.perf_counter()
        original = encode_png(image)
        response = await self._answer(request, original, trace, request_id)
        trace.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        self.metrics.stage_seconds.labels("total").observe(trace.timings["total_ms"] / 1000)
        self.metrics.answers.labels(request.mode, str(response.used_edit).lower()).inc()
        if response.fallback_reason is not None:
            self.metrics.fallbacks.labels(response.fallback_reason.split(":")[0]).inc()
        return response.model_copy(
            update={"timings": trace.timings, "mllm_calls": trace.calls, "truncated": trace.truncated}
        )

    async def _answer(
        self, request: AnswerRequest, original: bytes, trace: _Trace, request_id: str
    ) -> AnswerResponse:
        question = request.question
        task, routed = request.task, False
        if request.mode == "direct":
            task = NONE
        elif task == "auto":
            decision = await trace.timed("route", self.router.route(question))
            trace.calls += decision.calls
            if decision.truncated:
                trace.list_cut("route")  # counted in the metrics by the router
            task, routed = decision.task, True

        def direct() -> Awaitable[_Reasoned]:
            return trace.timed("reason_direct", self._reason(trace, original, None, question, None))

        if task == NONE:
            reasoned = await direct()
            return _response(reasoned, task=task, routed=routed, fallback=None)

        family = self.tasks.get(task)
        speculative: asyncio.Task[_Reasoned] | None = None
        if request.mode == "evr" and self.speculative:
            speculative = asyncio.create_task(direct())
        try:
            try:
                edit_b64 = base64.b64encode(original).decode()
                edited = await trace.timed(
                    "edit",
                    self.editor.edit(edit_b64, question, task, request_id=request_id),  # type: ignore[arg-type]
                )
            except EditorUnavailable as exc:
                reasoned = await (speculative if speculative is not None else direct())
                return _response(reasoned, task=task, routed=routed, fallback=f"{exc.kind}: {exc}")
            edited_b64 = base64.b64encode(edited).decode() if request.return_images else None

            verification: Verification | None = None
            if request.mode == "evr":
                verification = await trace.timed(
                    "verify", self._verify(trace, original, edited, task, question)
                )
                if not verification.reliable:
                    reasoned = await (speculative if speculative is not None else direct())
                    return _response(
                        reasoned,
                        task=task,
                        routed=routed,
                        fallback=f"unreliable: {_UNRELIABLE[verification.cause]}",
                        verification=verification,
                        edited_image=edited_b64,
                    )
            reasoned = await trace.timed(
                "reason_edit", self._reason(trace, original, edited, question, family.edit)
            )
            baseline = await _settled(speculative)
            return _response(
                reasoned,
                task=task,
                routed=routed,
                fallback=None,
                used_edit=True,
                verification=verification,
                edited_image=edited_b64,
                baseline=baseline.answer if baseline is not None else None,
            )
        finally:
            if speculative is not None and not speculative.done():
                speculative.cancel()
                with suppress(asyncio.CancelledError, MLLMError):
                    await speculative
            elif speculative is not None and not speculative.cancelled():
                # A failed speculation whose error the request already reports (MLLM down or not configured)
                # is handled: retrieving it keeps asyncio from logging "Task exception was never retrieved".
                speculative.exception()

    async def _reason(
        self, trace: _Trace, original: bytes, edited: bytes | None, question: str, edit: str | None
    ) -> _Reasoned:
        if edited is None:
            message = user_message(self.prompts.direct(question), [original])
            stage = "reason_direct"
        else:
            message = user_message(self.prompts.with_edit(question, edit or ""), [original, edited])
            stage = "reason_edit"
        result = await self.mllm.chat([message], temperature=self.temperature, max_tokens=self.max_tokens)
        trace.calls += result.requests
        self.metrics.mllm_calls.labels(stage).inc(result.requests)
        raw = result.texts[0]
        if not result.was_truncated(0):
            return _Reasoned(raw=raw, answer=extract_final_answer(raw))
        stated = explicit_final_answer(raw)
        trace.cut(stage, usable=stated is not None)
        if stated is None:
            raise incomplete_reply(
                result.backend,
                wanted="an answer",
                max_tokens=self.max_tokens,
                setting="ETCHR_VERIFIER_MAX_TOKENS",
            )
        return _Reasoned(raw=raw, answer=stated)

    async def _verify(
        self, trace: _Trace, original: bytes, edited: bytes, task: str, question: str
    ) -> Verification:
        """The family's judge prompt with the original first and the edit second, read by the one verdict
        reader: only a clear yes is reliable."""
        message = user_message(self.tasks.judge_prompt(task, question), [original, edited])
        result = await self.judge.chat([message], temperature=0.0, max_tokens=self.judge_max_tokens)
        trace.calls += result.requests
        self.metrics.mllm_calls.labels("verify").inc(result.requests)
        raw = result.texts[0]
        verdict = read_verdict(raw, truncated=result.was_truncated(0))
        if result.was_truncated(0):
            trace.cut("verify", usable=verdict.value is not None)
        self.metrics.verdicts.labels(
            "unparseable" if verdict.value is None else ("reliable" if verdict.value else "unreliable")
        ).inc()
        self.metrics.verdict_causes.labels(verdict.cause).inc()
        return Verification(reliable=verdict.reliable, raw=raw, cause=verdict.cause)


# Why an edit was not used, per verdict cause (the response's fallback_reason, after "unreliable: ").
_UNRELIABLE: Mapping[Cause, str] = MappingProxyType(
    {
        "no": "the judge did not accept the edit",
        "disagree": "the judge's leading and concluding verdicts disagree",
        "hedge": "the judge hedged instead of giving a verdict",
        "none": "the judge's reply holds no verdict",
        "truncated": "the judge's reply was cut at max_tokens before a verdict "
        "(ETCHR_VERIFIER_JUDGE_MAX_TOKENS)",
    }
)


async def _settled(task: asyncio.Task[_Reasoned] | None) -> _Reasoned | None:
    """The speculative direct answer if it succeeded; its failure must not sink an answer already made."""
    if task is None:
        return None
    try:
        return await task
    except MLLMError:
        return None


def _response(
    reasoned: _Reasoned,
    *,
    task: str,
    routed: bool,
    fallback: str | None,
    used_edit: bool = False,
    verification: Verification | None = None,
    edited_image: str | None = None,
    baseline: str | None = None,
) -> AnswerResponse:
    return AnswerResponse(
        answer=reasoned.answer,
        raw_answer=reasoned.raw,
        used_edit=used_edit,
        verification=verification,
        task=task,
        routed=routed,
        edited_image=edited_image,
        baseline_answer=baseline if used_edit else None,
        fallback_reason=fallback,
        timings={},
        mllm_calls=0,
    )
