"""Edit-Verify-Reason: the editor proposes a helper view, the judge verifies it, the MLLM answers.

Modes (docs/api.md): ``evr`` (with fallback to the original image), ``edit`` (no verification), ``direct``.
In ``evr`` the direct answer on the original is started concurrently with the edit (speculative fallback,
ETCHR_VERIFIER_SPECULATIVE), so a rejected or failed edit costs no extra wait; when the edit is used, that
answer is the baseline. Once the edit arrives, U reasons with it while the judge reads it (speculative
reasoning, ETCHR_VERIFIER_SPECULATIVE_REASONING): a yes returns that answer with no second round trip, a no
cancels it. Speculation changes latency and backend load, never the response: a call whose reply is not used
is not charged to it (``mllm_calls``, ``timings``, ``truncated``); it is counted in the speculative metrics.
MLLM failures propagate (the API turns them into 503/502); editor failures only mean "answer without it".

``usage`` sums the token usage of the calls charged (the same rule as ``mllm_calls``). An :class:`EVRObserver`
(the streamed answers) hears the progress of each stage and, when it asks, U's answer as it streams: a
speculative reasoning call is buffered in a :class:`_Tap` and handed over only once the answer uses it.

Replies cut at max_tokens (finish_reason "length") are listed in the response's ``truncated`` and counted. A
cut judge reply still holding a verdict is read as usual, one without reads as not reliable (cause
``truncated``); a cut reasoning reply with no stated answer is an :class:`MLLMIncomplete` (502) naming the
setting to raise, never an answer guessed from half-finished reasoning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from etchr.answers import explicit_final_answer, extract_final_answer
from etchr.clients.editor import EditorClient, EditorUnavailable
from etchr.imaging import MLLMImage
from etchr.mllm import MLLMClient, MLLMError, ReplyListener, user_message
from etchr.prompts import AnswerPrompts
from etchr.protocol.answer import AnswerRequest, AnswerResponse, EVRProgress, TokenUsage, Verification
from etchr.protocol.edit import EditProgress
from etchr.tasks import TaskRegistry
from etchr.verdicts import Cause, incomplete_reply, read_verdict
from etchr_verifier.metrics import VerifierMetrics
from etchr_verifier.routing import NONE, TaskRouter

T = TypeVar("T")


class EVRObserver(Protocol):
    """Who watches one answer being made (the streamed responses); every call is made on the event loop."""

    def progress(self, event: EVRProgress) -> None:
        """A stage started, moved on (the edit's queue position and steps) or ended."""

    @property
    def answer_listener(self) -> ReplyListener | None:
        """Where U's answer goes as it streams, or None to have it in one piece only."""


class _Tap:
    """One reasoning call's streamed reply: buffered until the answer uses the call, then handed over whole
    and followed live. A call that is never used is never heard (the same rule as charging)."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._listener: ReplyListener | None = None

    def delta(self, text: str) -> None:
        self._pieces.append(text)
        if self._listener is not None:
            self._listener.delta(text)

    def restart(self) -> None:
        self._pieces.clear()
        if self._listener is not None:
            self._listener.restart()

    def attach(self, listener: ReplyListener | None) -> None:
        if listener is None or self._listener is not None:
            return
        for piece in self._pieces:
            listener.delta(piece)
        self._listener = listener


@dataclass
class _Trace:
    """Per-request bookkeeping: stage timings (ms) and MLLM requests made."""

    metrics: VerifierMetrics
    timings: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    truncated: list[str] = field(default_factory=list)  # stages whose reply was cut at max_tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0
    observer: EVRObserver | None = None

    def charge(self, requests: int, prompt_tokens: int, completion_tokens: int) -> None:
        """A call whose reply the answer uses: its requests and tokens are the request's."""
        self.calls += requests
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def usage(self) -> TokenUsage:
        total = self.prompt_tokens + self.completion_tokens
        return TokenUsage(
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total
        )

    def say(self, stage: str, state: str, message: str, **fields: Any) -> None:
        """Tell the observer, if any, how the answer is coming along."""
        if self.observer is not None:
            self.observer.progress(EVRProgress(stage=stage, state=state, message=message, **fields))  # type: ignore[arg-type]

    @property
    def listener(self) -> ReplyListener | None:
        return self.observer.answer_listener if self.observer is not None else None

    def edit_progress(self, task: str) -> Callable[[EditProgress], None] | None:
        """The editor's job progress (queue position, then denoising step i of N) as EVR progress."""
        if self.observer is None:
            return None

        def relay(progress: EditProgress) -> None:
            if progress.status == "queued" and progress.queue_position is not None:
                ahead = progress.queue_position
                message = f"Edit queued: {ahead} job{'' if ahead == 1 else 's'} ahead…"
                self.say("edit", "running", message, task=task, queue_position=ahead)
            elif progress.status == "running" and progress.step is not None and progress.steps:
                message = f"Editing: step {progress.step} of {progress.steps}…"
                self.say("edit", "running", message, task=task, step=progress.step, steps=progress.steps)

        return relay

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
    prompt_tokens: int = 0


class _Speculation:
    """A reasoning call started before it is known to be needed.

    ``use`` waits for its reply (its failure is then the request's); ``drop`` cancels it if it is still
    running, or throws its reply away if it already came. Either way the outcome is counted once in
    ``etchr_verifier_speculative_calls_total`` (used, cancelled, discarded, failed), and a discarded reply's
    completion tokens in ``etchr_verifier_speculative_extra_tokens_total``. Only a used reply is charged to
    the response (``mllm_calls``, ``timings``, ``truncated``): the response is what the strict order gives.
    """

    def __init__(
        self, stage: str, task: asyncio.Future[_Reasoned], metrics: VerifierMetrics, tap: _Tap
    ) -> None:
        self.stage = stage
        self.task = task
        self.metrics = metrics
        self.tap = tap
        self._counted = False

    async def use(self, listener: ReplyListener | None = None) -> _Reasoned:
        """Its reply; ``listener`` hears what it streamed so far and the rest as it comes."""
        self.tap.attach(listener)
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

    async def answer(
        self,
        request: AnswerRequest,
        original: MLLMImage,
        *,
        request_id: str,
        context: Sequence[dict[str, Any]] = (),
        observer: EVRObserver | None = None,
    ) -> AnswerResponse:
        """``original``: the client's image as it travels on (``etchr.imaging.prepare_input``). ``context``:
        earlier chat turns (OpenAI messages, text only) U reasons after, before the question; ``observer``
        hears the progress (streamed responses)."""
        self.mllm.require_configured()  # every mode reasons with U: fail before asking for a GPU edit
        trace = _Trace(self.metrics, observer=observer)
        started = time.perf_counter()
        response = await self._answer(request, original, trace, request_id, list(context))
        trace.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        self.metrics.stage_seconds.labels("total").observe(trace.timings["total_ms"] / 1000)
        self.metrics.answers.labels(request.mode, str(response.used_edit).lower()).inc()
        if response.fallback_reason is not None:
            self.metrics.fallbacks.labels(response.fallback_reason.split(":")[0]).inc()
        return response.model_copy(
            update={
                "timings": trace.timings,
                "mllm_calls": trace.calls,
                "truncated": trace.truncated,
                "usage": trace.usage(),
            }
        )

    async def _answer(
        self,
        request: AnswerRequest,
        original: MLLMImage,
        trace: _Trace,
        request_id: str,
        context: list[dict[str, Any]],
    ) -> AnswerResponse:
        question = request.question
        task, routed = request.task, False
        if request.mode == "direct":
            task = NONE
        elif task == "auto":
            trace.say("route", "started", "Choosing a task family for the question…")
            decision = await trace.timed("route", self.router.route(question))
            trace.charge(decision.calls, decision.prompt_tokens, decision.completion_tokens)
            if decision.truncated:
                trace.list_cut("route")  # counted in the metrics by the router
            task, routed = decision.task, True
            chosen = "no edit helps: answering directly" if task == NONE else f"routed to {task}"
            trace.say("route", "done", f"{chosen[0].upper()}{chosen[1:]}.", task=task)

        def reason_direct(tap: _Tap | None) -> Awaitable[_Reasoned]:
            return self._reason(original, None, question, None, context, tap)

        if task == NONE:
            trace.say("reason", "started", "Answering from the original image…", task=task)
            reasoned = self._charge(trace, await reason_direct(_attached(trace)))
            return _response(reasoned, task=task, routed=routed, fallback=None)

        family = self.tasks.get(task)
        direct: _Speculation | None = None  # the answer on the original alone, while the edit is made
        reasoning: _Speculation | None = None  # the answer with the edit, while the judge reads it
        if request.mode == "evr" and self.speculative:
            direct = self._speculate("reason_direct", reason_direct, trace)

        async def fallback() -> _Reasoned:
            trace.say("reason", "started", "Answering from the original image…", task=task)
            if direct is not None:
                return self._charge(trace, await direct.use(trace.listener))
            return self._charge(trace, await reason_direct(_attached(trace)))

        try:
            trace.say("edit", "started", f"Editing the image ({task})…", task=task)
            try:
                edited = MLLMImage.from_bytes(  # its data URL built once, for the judge and U alike
                    await trace.timed(
                        "edit",
                        self.editor.edit(
                            original.base64,
                            question,
                            task,  # type: ignore[arg-type]
                            request_id=request_id,
                            on_progress=trace.edit_progress(task),
                        ),
                    )
                )
            except EditorUnavailable as exc:
                trace.say("edit", "done", f"No edit ({exc.kind}): answering without it.", task=task)
                reasoned = await fallback()
                return _response(reasoned, task=task, routed=routed, fallback=f"{exc.kind}: {exc}")
            trace.say("edit", "done", "The edit is ready.", task=task)
            edited_b64 = edited.base64 if request.return_images else None

            def reason_edit(tap: _Tap | None) -> Awaitable[_Reasoned]:
                return self._reason(original, edited, question, family.edit, context, tap)

            verification: Verification | None = None
            if request.mode == "evr":
                if self.speculative_reasoning:  # U does not need the verdict, only whether it is yes
                    reasoning = self._speculate("reason_edit", reason_edit, trace)
                trace.say("verify", "started", "Checking the edit holds what the question needs…", task=task)
                verification = await trace.timed(
                    "verify", self._verify(trace, original, edited, task, question)
                )
                verdict = (
                    "The judge accepted the edit."
                    if verification.reliable
                    else f"Not using the edit: {_UNRELIABLE[verification.cause]}."
                )
                trace.say("verify", "done", verdict, task=task, reliable=verification.reliable)
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
            trace.say("reason", "started", "Answering with the edit…", task=task)
            if reasoning is not None:
                reasoned = self._charge(trace, await reasoning.use(trace.listener))
            else:
                reasoned = self._charge(trace, await reason_edit(_attached(trace)))
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

    def _speculate(
        self, stage: str, reason: Callable[[_Tap | None], Awaitable[_Reasoned]], trace: _Trace
    ) -> _Speculation:
        """Start ``reason`` now; its streamed reply (if the observer wants one) waits in a tap until used."""
        tap = _Tap()
        work = reason(tap if trace.listener is not None else None)
        return _Speculation(stage, asyncio.ensure_future(work), self.metrics, tap)

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
        trace.charge(reasoned.requests, reasoned.prompt_tokens, reasoned.completion_tokens)
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
        self,
        original: MLLMImage,
        edited: MLLMImage | None,
        question: str,
        edit: str | None,
        context: list[dict[str, Any]],
        tap: _Tap | None,
    ) -> _Reasoned:
        """U's reply, with or without the edit, after the chat's earlier turns (``context``); streamed into
        ``tap`` when one is given. Nothing is charged to the request until it is used."""
        started = time.perf_counter()
        if edited is None:
            message = user_message(self.prompts.direct(question), [original])
            stage = "reason_direct"
        else:
            message = user_message(self.prompts.with_edit(question, edit or ""), [original, edited])
            stage = "reason_edit"
        result = await self.mllm.chat(
            [*context, message], temperature=self.temperature, max_tokens=self.max_tokens, listener=tap
        )
        raw, truncated = result.texts[0], result.was_truncated(0)
        return _Reasoned(
            stage=stage,
            raw=raw,
            answer=explicit_final_answer(raw) if truncated else extract_final_answer(raw),
            truncated=truncated,
            requests=result.requests,
            completion_tokens=result.completion_tokens,
            prompt_tokens=result.prompt_tokens,
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
        trace.charge(result.requests, result.prompt_tokens, result.completion_tokens)
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


def _attached(trace: _Trace) -> _Tap | None:
    """A tap already handing over to the observer's listener (a call the answer uses from its start)."""
    if trace.listener is None:
        return None
    tap = _Tap()
    tap.attach(trace.listener)
    return tap


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
