"""Edit-Verify-Reason: the editor proposes a helper view, the judge verifies it, the MLLM answers.

Modes (docs/api.md): ``evr`` (with fallback to the original image), ``edit`` (no verification), ``direct``.
In ``evr`` the direct answer on the original is started concurrently with the edit (speculative fallback,
ETCHR_VERIFIER_SPECULATIVE), so a rejected or failed edit costs no extra wait; when the edit is used, that
answer is the baseline. Once the edit arrives, U reasons with it while the judge reads it (speculative
reasoning, ETCHR_VERIFIER_SPECULATIVE_REASONING): a yes returns that answer with no second round trip, a no
cancels it. Speculation changes latency and backend load, never the response: a call whose reply is not used
is not charged to it (``mllm_calls``, ``timings``, ``truncated``); it is counted in the speculative metrics.
MLLM failures propagate (the API turns them into 503/502); editor failures only mean "answer without it".

Replies cut at max_tokens (finish_reason "length") are listed in the response's ``truncated`` and counted. A
cut judge reply still holding a verdict is read as usual, one without reads as not reliable (cause
``truncated``); a cut reasoning reply with no stated answer is an :class:`MLLMIncomplete` (502) naming the
setting to raise, never an answer guessed from half-finished reasoning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from etchr.answers import explicit_final_answer, extract_final_answer
from etchr.clients.editor import EditorClient, EditorUnavailable
from etchr.imaging import MLLMImage
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
    """U's reply as it came back; charged to the request (``EVRPipeline._charge``) only when it is used."""

    stage: str  # reason_direct or reason_edit
    raw: str
    answer: str | None  # None: cut at max_tokens before it stated an answer
    truncated: bool
    requests: int
    completion_tokens: int
    backend: str
    seconds: float


class _Speculation:
    """A reasoning call started before it is known to be needed.

    ``use`` waits for its reply (its failure is then the request's); ``drop`` cancels it if it is still
    running, or throws its reply away if it already came. Either way the outcome is counted once in
    ``etchr_verifier_speculative_calls_total`` (used, cancelled, discarded, failed), and a discarded reply's
    completion tokens in ``etchr_verifier_speculative_extra_tokens_total``. Only a used reply is charged to
    the response (``mllm_calls``, ``timings``, ``truncated``): the response is what the strict order gives.
    """

    def __init__(self, stage: str, task: asyncio.Future[_Reasoned], metrics: VerifierMetrics) -> None:
        self.stage = stage
        self.task = task
        self.metrics = metrics
        self._counted = False

    async def use(self) -> _Reasoned:
        try:
            return await self.task
        finally:
            self._count(used=True)

    async def drop(self) -> None:
        if not self.task.done():
            self.task.cancel()
        with suppress(asyncio.CancelledError, MLLMError):
            await self.task
        self._count(used=False)

    def _count(self, *, used: bool) -> None:
        if self._counted or not self.task.done():
            return
        self._counted = True
        if self.task.cancelled():
            outcome = "cancelled"
        elif used:
            outcome = "used"
        elif self.task.exception() is not None:  # retrieved: asyncio logs no "never retrieved"
            outcome = "failed"
        else:
            outcome = "discarded"
            self.metrics.speculative_extra_tokens.labels(self.stage).inc(self.task.result().completion_tokens)
        self.metrics.speculative_calls.labels(self.stage, outcome).inc()


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
        speculative_reasoning: bool,
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
        self.speculative_reasoning = speculative_reasoning
        self.max_tokens = max_tokens
        self.judge_max_tokens = judge_max_tokens
        self.temperature = temperature

    async def answer(self, request: AnswerRequest, original: MLLMImage, *, request_id: str) -> AnswerResponse:
        """``original``: the client's image as it travels on (``etchr.imaging.prepare_input``)."""
        self.mllm.require_configured()  # every mode reasons with U: fail before asking for a GPU edit
        trace = _Trace(self.metrics)
        started = time.perf_counter()
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
        self, request: AnswerRequest, original: MLLMImage, trace: _Trace, request_id: str
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

        if task == NONE:
            reasoned = self._charge(trace, await self._reason(original, None, question, None))
            return _response(reasoned, task=task, routed=routed, fallback=None)

        family = self.tasks.get(task)
        direct: _Speculation | None = None  # the answer on the original alone, while the edit is made
        reasoning: _Speculation | None = None  # the answer with the edit, while the judge reads it
        if request.mode == "evr" and self.speculative:
            direct = self._speculate("reason_direct", self._reason(original, None, question, None))

        async def fallback() -> _Reasoned:
            if direct is not None:
                return self._charge(trace, await direct.use())
            return self._charge(trace, await self._reason(original, None, question, None))

        try:
            try:
                edited = MLLMImage.from_bytes(  # its data URL built once, for the judge and U alike
                    await trace.timed(
                        "edit",
                        self.editor.edit(original.base64, question, task, request_id=request_id),  # type: ignore[arg-type]
                    )
                )
            except EditorUnavailable as exc:
                reasoned = await fallback()
                return _response(reasoned, task=task, routed=routed, fallback=f"{exc.kind}: {exc}")
            edited_b64 = edited.base64 if request.return_images else None

            verification: Verification | None = None
            if request.mode == "evr":
                if self.speculative_reasoning:  # U does not need the verdict, only whether it is yes
                    reasoning = self._speculate(
                        "reason_edit", self._reason(original, edited, question, family.edit)
                    )
                verification = await trace.timed(
                    "verify", self._verify(trace, original, edited, task, question)
                )
                if not verification.reliable:
                    if reasoning is not None:
                        await reasoning.drop()  # before waiting for the fallback: free the backend now
                    reasoned = await fallback()
                    return _response(
                        reasoned,
                        task=task,
                        routed=routed,
                        fallback=f"unreliable: {_UNRELIABLE[verification.cause]}",
                        verification=verification,
                        edited_image=edited_b64,
                    )
            if reasoning is not None:
                reasoned = self._charge(trace, await reasoning.use())
            else:
                reasoned = self._charge(trace, await self._reason(original, edited, question, family.edit))
            baseline = await self._baseline(trace, direct)
            return _response(
                reasoned,
                task=task,
                routed=routed,
                fallback=None,
                used_edit=True,
                verification=verification,
                edited_image=edited_b64,
                baseline=baseline,
            )
        finally:
            # Whatever is still running is no longer needed: an error or the deadline ended the request.
            for speculation in (reasoning, direct):
                if speculation is not None:
                    await speculation.drop()

    def _speculate(self, stage: str, work: Awaitable[_Reasoned]) -> _Speculation:
        return _Speculation(stage, asyncio.ensure_future(work), self.metrics)

    async def _baseline(self, trace: _Trace, direct: _Speculation | None) -> str | None:
        """The speculative direct answer if it succeeded; its failure must not sink an answer already made."""
        if direct is None:
            return None
        try:
            return self._charge(trace, await direct.use()).answer
        except MLLMError:
            return None

    def _charge(self, trace: _Trace, reasoned: _Reasoned) -> _Reasoned:
        """A reasoning reply the answer uses, charged to the request: its calls, its time, its cut. A reply
        cut before it stated an answer is an :class:`MLLMIncomplete` naming the setting to raise."""
        stage = reasoned.stage
        trace.calls += reasoned.requests
        trace.timings[f"{stage}_ms"] = round(reasoned.seconds * 1000, 2)
        self.metrics.stage_seconds.labels(stage).observe(reasoned.seconds)
        self.metrics.mllm_calls.labels(stage).inc(reasoned.requests)
        if reasoned.truncated:
            trace.cut(stage, usable=reasoned.answer is not None)
        if reasoned.answer is None:
            raise incomplete_reply(
                reasoned.backend,
                wanted="an answer",
                max_tokens=self.max_tokens,
                setting="ETCHR_VERIFIER_MAX_TOKENS",
            )
        return reasoned

    async def _reason(
        self, original: MLLMImage, edited: MLLMImage | None, question: str, edit: str | None
    ) -> _Reasoned:
        """U's reply, with or without the edit; nothing is charged to the request until it is used."""
        started = time.perf_counter()
        if edited is None:
            message = user_message(self.prompts.direct(question), [original])
            stage = "reason_direct"
        else:
            message = user_message(self.prompts.with_edit(question, edit or ""), [original, edited])
            stage = "reason_edit"
        result = await self.mllm.chat([message], temperature=self.temperature, max_tokens=self.max_tokens)
        raw, truncated = result.texts[0], result.was_truncated(0)
        return _Reasoned(
            stage=stage,
            raw=raw,
            answer=explicit_final_answer(raw) if truncated else extract_final_answer(raw),
            truncated=truncated,
            requests=result.requests,
            completion_tokens=result.completion_tokens,
            backend=result.backend,
            seconds=time.perf_counter() - started,
        )

    async def _verify(
        self, trace: _Trace, original: MLLMImage, edited: MLLMImage, task: str, question: str
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
