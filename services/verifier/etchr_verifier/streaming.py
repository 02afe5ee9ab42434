"""Streamed answers as server-sent events (``fastapi.sse``): the chat facade's ``chat.completion.chunk``s and
``/answer``'s progress events, both fed by EVR's observer while the answer is made.

EVR runs in a task; its progress and U's answer text reach the response through a queue. A client that
disconnects cancels the response, and with it that task: the MLLM calls in flight and the edit request
(the editor client cancels its job). A failure after the 200 went out is sent as an event holding the one
error body (the openai client raises it as ``APIError``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from pydantic import BaseModel

from etchr.mllm import ReplyListener
from etchr.protocol.answer import (
    AnswerResponse,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    EVRProgress,
)
from etchr_verifier.chat import edit_markdown
from etchr_verifier.errors import error_body

logger = logging.getLogger("etchr.verifier.streaming")

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer it
# A comment line after this long without an event, so proxies and load balancers keep a quiet stream open
# (a thinking judge or a long queue can be silent for minutes); clients ignore it.
KEEPALIVE_S = 15.0


def _data(model: BaseModel, event: str | None = None) -> bytes:
    return format_sse_event(data_str=model.model_dump_json(exclude_none=True), event=event)


def _chunk_data(chunk: ChatCompletionChunk) -> bytes:
    """A chunk as OpenAI sends one: fields without a value left out, except the ones its reference requires
    even when null (each choice's ``finish_reason`` and ``logprobs``)."""
    body = chunk.model_dump(mode="json", exclude_none=True)
    if chunk.etchr is not None:  # what /answer would have said, whole (its nulls are part of it)
        body["etchr"] = chunk.etchr.model_dump(mode="json")
    for choice in body["choices"]:
        choice.setdefault("finish_reason", None)
        choice.setdefault("logprobs", None)
    return format_sse_event(data_str=json.dumps(body, separators=(",", ":")))


class _EventQueue(ABC):
    """The observer EVR reports to; what it hears is queued as SSE bytes for the response to send."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, data: bytes) -> None:
        self.queue.put_nowait(data)

    @property
    def answer_listener(self) -> ReplyListener | None:
        return None

    @abstractmethod
    def progress(self, event: EVRProgress) -> None:
        """An EVR step: queued as this stream's event for it."""

    def opening(self) -> list[bytes]:
        return []

    @abstractmethod
    def finish(self, result: AnswerResponse) -> list[bytes]:
        """The events that end the stream of an answer made."""

    @abstractmethod
    def failure(self, exc: Exception) -> list[bytes]:
        """The events that end the stream of an answer that failed after the 200 went out."""


class AnswerEvents(_EventQueue):
    """``POST /answer`` with ``stream``: 'progress' events, then one 'answer' or one 'error' event."""

    def progress(self, event: EVRProgress) -> None:
        self.put(_data(event, "progress"))

    def finish(self, result: AnswerResponse) -> list[bytes]:
        return [format_sse_event(data_str=result.model_dump_json(), event="answer")]

    def failure(self, exc: Exception) -> list[bytes]:
        return [_data(error_body(exc), "error")]


class ChatChunks(_EventQueue):
    """The chat facade's stream: progress as ``reasoning_content``, U's answer as ``content``.

    U's text is passed through live up to ``live_chars`` characters (a quarter of the MLLM reply cap keeps
    what was sent a prefix of the capped ``raw_answer``); the rest follows when the answer is made, so the
    streamed content always equals the non-streamed one. Only when a backend's stream broke after some of it
    went out and the call asked again answered differently can the two differ; that is logged.
    """

    def __init__(
        self,
        *,
        completion_id: str,
        model: str,
        created: int,
        include_usage: bool,
        live_chars: int,
        show_edit: bool = False,
    ) -> None:
        super().__init__()
        self.show_edit = show_edit
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.live_chars = live_chars
        self._sent: list[str] = []
        self._sent_chars = 0
        self._live = True

    def _chunk(self, delta: ChatCompletionDelta, **fields: object) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[ChatCompletionChunkChoice(delta=delta)],
            **fields,  # type: ignore[arg-type]
        )

    def opening(self) -> list[bytes]:
        return [_chunk_data(self._chunk(ChatCompletionDelta(role="assistant", content="")))]

    def progress(self, event: EVRProgress) -> None:
        delta = ChatCompletionDelta(reasoning_content=f"{event.message}\n")
        self.put(_chunk_data(self._chunk(delta, etchr_progress=event)))

    @property
    def answer_listener(self) -> ReplyListener:
        return self

    def delta(self, text: str) -> None:
        """A piece of U's answer, sent on while the live budget lasts."""
        if not self._live or self._sent_chars + len(text) > self.live_chars:
            self._live = False
            return
        self._sent.append(text)
        self._sent_chars += len(text)
        self.put(_chunk_data(self._chunk(ChatCompletionDelta(content=text))))

    def restart(self) -> None:
        """The reply starts again on another try: nothing more goes out live; the end sends the rest."""
        self._live = False

    def finish(self, result: AnswerResponse) -> list[bytes]:
        sent = "".join(self._sent)
        events = []
        if result.raw_answer.startswith(sent):
            rest = result.raw_answer[len(sent) :]
            if rest:
                events.append(_chunk_data(self._chunk(ChatCompletionDelta(content=rest))))
        else:
            logger.warning("the streamed answer restarted after %d characters went out", len(sent))
        picture = edit_markdown(result) if self.show_edit else ""
        if picture:
            events.append(_chunk_data(self._chunk(ChatCompletionDelta(content=picture))))
        last = self._chunk(ChatCompletionDelta(), etchr=result)
        last.choices[0].finish_reason = "stop"
        events.append(_chunk_data(last))
        if self.include_usage:
            usage = ChatCompletionChunk(
                id=self.completion_id, created=self.created, model=self.model, choices=[], usage=result.usage
            )
            events.append(_chunk_data(usage))
        events.append(DONE)
        return events

    def failure(self, exc: Exception) -> list[bytes]:
        return [format_sse_event(data_str=json.dumps(error_body(exc).model_dump())), DONE]


async def stream_answer(
    events: _EventQueue, work: Callable[[], Awaitable[AnswerResponse]]
) -> AsyncIterator[bytes]:
    """Run ``work`` and yield its events as they come; cancelling this (a disconnect) cancels the work."""
    task = asyncio.ensure_future(work())
    task.add_done_callback(lambda _: events.queue.put_nowait(None))
    try:
        for data in events.opening():
            yield data
        while True:
            try:
                data = await asyncio.wait_for(events.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield KEEPALIVE_COMMENT
                continue
            if data is None:
                break
            yield data
        try:
            result = task.result()
        except Exception as exc:
            for data in events.failure(exc):
                yield data
            return
        for data in events.finish(result):
            yield data
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
