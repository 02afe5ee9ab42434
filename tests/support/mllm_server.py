"""A scripted OpenAI-compatible MLLM over real HTTP: the only stand-in tests use for the external model.

FastAPI under uvicorn in a background thread, so requests are truly concurrent; every request is recorded
before it is answered, and a responder decides the answer (text, several choices, an error status, a
delay). Delays are ``asyncio.sleep``: a slow reply never blocks the others.

    with ScriptedMLLM(lambda req: "1" if req.image_count else "0") as mllm:
        client = MLLMClient([Backend(mllm.base_url, "key", "test-mllm")])
        ...
        assert mllm.requests[0].images[0].startswith("data:image/png;base64,")

Failure injection: ``Reply(status=503)`` (an error body), ``Reply(content=None)`` (``"content": null``),
``Reply(content=[])`` (``"choices": []``), ``Reply(content="   ")`` (blank), ``Reply(content="x" * 10**7)``
(oversized), ``Reply(finish_reason="length")`` (cut at max_tokens), ``Reply(delay_s=...)`` (slow); and
``fail_next`` / ``reply_next`` to answer the next requests that way before the responder is consulted.

``stream: true`` requests are answered as vLLM and OpenAI stream: a role chunk, the content in word-sized
pieces (``Reply.piece_delay_s`` apart), a chunk with the finish_reason, the usage chunk when
``stream_options.include_usage`` asks for it, then ``[DONE]``; ``Reply.cut_after`` drops the connection
after that many pieces (a backend dying mid-reply).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.support.servers import UvicornThread

__all__ = ["RecordedRequest", "Reply", "Responder", "ScriptedMLLM"]


@dataclass
class RecordedRequest:
    """One chat-completions request as the server received it, for assertions."""

    model: str
    messages: list[dict[str, Any]]
    n: int
    temperature: float | None
    max_tokens: int | None
    text: str  # every text part of every message, joined with "\n"
    images: list[str]  # the URL of every image_url part (data URLs), in order
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return "\n".join(_texts(message.get("content")))
        return ""

    @property
    def image_count(self) -> int:
        return len(self.images)


@dataclass
class Reply:
    """What to answer. A list gives one choice per item (``[]``: a 200 with ``"choices": []``); a ``None``
    content is sent as JSON null; any string is sent as is, however long.

    A non-200 status answers an OpenAI-style error body whose message is ``content`` (when it is a string
    other than the default) or the status phrase.
    """

    content: str | list[str | None] | None = "ok"
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"retry-after-ms": "1"}
    # "length" mimics a reply cut at max_tokens; a list gives one finish_reason per choice.
    finish_reason: str | list[str] = "stop"
    piece_delay_s: float = 0.0  # streamed replies: the pause before each piece of content
    cut_after: int | None = None  # streamed replies: the connection drops after this many pieces


Responder = Callable[[RecordedRequest], Reply | str]


def _default_responder(request: RecordedRequest) -> Reply | str:
    return "ok"


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict)]
        return [part.get("text", "") for part in parts if part.get("type") == "text"]
    return []


def _images(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image_url = part.get("image_url")
            urls.append(image_url.get("url", "") if isinstance(image_url, dict) else str(image_url))
    return urls


def _record(body: dict[str, Any], headers: dict[str, str]) -> RecordedRequest:
    messages = body.get("messages") or []
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return RecordedRequest(
        model=str(body.get("model", "")),
        messages=messages,
        n=int(body.get("n") or 1),
        temperature=body.get("temperature"),
        max_tokens=max_tokens,
        text="\n".join(text for message in messages for text in _texts(message.get("content"))),
        images=[url for message in messages for url in _images(message.get("content"))],
        headers=headers,
        body=body,
    )


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


class ScriptedMLLM:
    """An OpenAI-compatible chat server whose answers a test scripts; see the module docstring.

    ``honour_n=False`` mimics backends that ignore ``n`` and always answer one choice.
    ``latency_s`` is added to every reply (on top of ``Reply.delay_s``); ``responder`` and ``latency_s``
    may be changed while the server runs. ``in_flight`` / ``max_in_flight`` count concurrent requests.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency_s: float = 0.0,
        honour_n: bool = True,
        models: Sequence[str] = ("test-mllm",),
    ) -> None:
        self.responder: Responder = responder or _default_responder
        self.latency_s = latency_s
        self.honour_n = honour_n
        self.models = list(models)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._next_replies: list[Reply] = []  # fail_next / reply_next: answered before the responder
        self.in_flight = 0
        self.max_in_flight = 0
        # Set by stop(): scripted delays end early so a client that gave up cannot hold shutdown.
        self._stopping = threading.Event()
        self._server = UvicornThread(self._app())
        self._server.server.config.timeout_graceful_shutdown = 5

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> ScriptedMLLM:
        self._server.start(wait_ready=False)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    def __enter__(self) -> ScriptedMLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"{self._server.url}/v1"

    @property
    def port(self) -> int:
        return self._server.port

    # ---------------------------------------------------------------------------------------- scripting

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the chat requests received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget recorded requests, replies queued by fail_next / reply_next and the in-flight maximum."""
        with self._lock:
            self._requests.clear()
            self._next_replies.clear()
            self.max_in_flight = self.in_flight

    def fail_next(self, count: int = 1, status: int = 503, *, retry_after_ms: int | None = 1) -> None:
        """Answer the next ``count`` chat requests with ``status`` (before the responder is consulted).

        ``retry-after-ms`` defaults to 1 so the openai client's retry does not wait its ~0.5 s backoff.
        """
        headers = {} if retry_after_ms is None else {"retry-after-ms": str(retry_after_ms)}
        self.reply_next(*(Reply(status=status, headers=headers) for _ in range(count)))

    def reply_next(self, *replies: Reply | str) -> None:
        """Answer the next chat requests with ``replies``, one each in order, before the responder is
        consulted, e.g. ``reply_next(Reply(content=None), Reply(content=[]))`` for a null then no choices."""
        with self._lock:
            self._next_replies.extend(Reply(reply) if isinstance(reply, str) else reply for reply in replies)

    # ----------------------------------------------------------------------------------------------- app

    def _app(self) -> FastAPI:
        app = FastAPI(title="scripted MLLM")

        @app.get("/v1/models")
        async def list_models() -> dict[str, Any]:
            created = int(time.time())
            return {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": created, "owned_by": "etchr-tests"}
                    for model in self.models
                ],
            }

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            body = await request.json()
            recorded = _record(body, {key.lower(): value for key, value in request.headers.items()})
            with self._lock:
                self._requests.append(recorded)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                scripted = self._next_replies.pop(0) if self._next_replies else None
            try:
                reply: Reply | str
                if scripted is not None:
                    reply = scripted
                else:
                    try:
                        reply = self.responder(recorded)
                    except Exception as exc:  # a broken responder is a 500 the test will see, not a hang
                        reply = Reply(content=f"responder raised {exc!r}", status=500)
                if isinstance(reply, str):
                    reply = Reply(content=reply)
                await self._sleep(self.latency_s + reply.delay_s)
                return self._respond(recorded, reply)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return app

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    def _respond(self, request: RecordedRequest, reply: Reply) -> Response:
        if reply.status != 200:
            custom = isinstance(reply.content, str) and reply.content != "ok"
            message = reply.content if custom else f"{HTTPStatus(reply.status).phrase} (scripted)"
            error = {"message": message, "type": _error_type(reply.status), "code": str(reply.status)}
            return JSONResponse({"error": error}, status_code=reply.status, headers=reply.headers)
        contents = list(reply.content) if isinstance(reply.content, list) else [reply.content] * request.n
        if not self.honour_n:
            contents = contents[:1]
        finish = reply.finish_reason
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish[index] if isinstance(finish, list) else finish,
                "logprobs": None,
            }
            for index, content in enumerate(contents)
        ]
        prompt_tokens = len(request.text.split()) + 256 * request.image_count
        completion_tokens = sum(len((content or "").split()) for content in contents)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if request.body.get("stream"):
            return StreamingResponse(
                self._stream(request, reply, contents, usage), media_type="text/event-stream"
            )
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": choices,
            "usage": usage,
        }
        return JSONResponse(body, headers=reply.headers)

    async def _stream(
        self, request: RecordedRequest, reply: Reply, contents: list[str | None], usage: dict[str, int]
    ) -> Any:
        """The reply as server-sent chunks (first choice only: streaming callers ask for one)."""
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": request.model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n".encode()

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}]

        yield chunk(delta({"role": "assistant", "content": ""}))
        text = contents[0] if contents else None
        for count, piece in enumerate(re.findall(r"\S+\s*|\s+", text or ""), start=1):
            await self._sleep(reply.piece_delay_s)
            yield chunk(delta({"content": piece}))
            if reply.cut_after is not None and count >= reply.cut_after:
                raise ConnectionResetError("scripted: the backend died mid-reply")
        finish = reply.finish_reason[0] if isinstance(reply.finish_reason, list) else reply.finish_reason
        yield chunk(delta({}, finish))
        if (request.body.get("stream_options") or {}).get("include_usage"):
            yield chunk([], usage=usage)
        yield b"data: [DONE]\n\n"
