"""The OpenAI-compatible client pool every service uses to talk to the understanding model U and the judge J.

One ``openai.AsyncOpenAI`` per backend URL does the HTTP work, including its own retries with backoff on
429/5xx/timeouts (honouring ``Retry-After``). On top of that this module adds what a pool of self-hosted
backends needs: fail-over to the next backend when one's retries are exhausted (round-robin start so load
spreads, a failed backend cooled down for a while), a bound on in-flight requests, ``n`` decodings even on
backends that ignore ``n``, and errors a service can map to an honest status (503 / 502) — never a silent
empty answer: a 200 whose content is null, empty or blank, or that has no choices, is a backend failure like
a 5xx (retried, failed over, then :class:`MLLMUnavailable`). Reply texts are capped in length (head and tail
kept, the cut marked) before any caller sees them.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import openai
import orjson
from PIL import Image

from etchr.imaging import MLLMImage, encode_png
from etchr.settings import MLLMSettings

__all__ = [
    "Backend",
    "ChatResult",
    "MLLMClient",
    "MLLMError",
    "MLLMIncomplete",
    "MLLMNotConfigured",
    "MLLMRejected",
    "MLLMUnavailable",
    "ReplyListener",
    "cap_reply",
    "image_part",
    "user_message",
]

# 4xx statuses the openai client itself retries (request timeout, lock timeout, rate limit): a backend
# still failing with one of these after its retries is unavailable, not rejecting the request.
_TRANSIENT_4XX: frozenset[int] = frozenset({408, 409, 429})
# Readiness probes must answer fast even when a backend black-holes packets.
_PING_TIMEOUT_S = 5.0
# A 200 with empty content is retried by us (the openai client only retries statuses): a short, doubling
# pause, like the client's own backoff, so a backend that blipped gets a moment without stalling the caller.
_EMPTY_RETRY_BACKOFF_S = 0.25
_EMPTY_RETRY_BACKOFF_MAX_S = 2.0
# Default of ETCHR_MLLM_MAX_REPLY_CHARS (see etchr.settings for why).
DEFAULT_MAX_REPLY_CHARS = 32_768


@dataclass(frozen=True)
class Backend:
    """One OpenAI-compatible endpoint serving one model."""

    base_url: str
    api_key: str = field(repr=False)  # never in logs or reprs
    model: str

    @property
    def label(self) -> str:
        """How errors and logs name the backend, e.g. ``Qwen/Qwen3-VL-8B at http://host:8000/v1``."""
        return f"{self.model} at {self.base_url}"


class MLLMError(Exception):
    """Base of every MLLM failure; ``backend`` names the backend(s) involved (empty if none)."""

    def __init__(self, message: str, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class MLLMUnavailable(MLLMError):
    """Every backend failed after its retries (connection, timeout, 429, 5xx): services answer 503."""


class MLLMRejected(MLLMError):
    """A backend refused the request itself (4xx, e.g. the model takes no images): services answer 502.

    Not retried and not failed over: another replica of the same model would refuse it too.
    """


class MLLMIncomplete(MLLMRejected):
    """A reply cut at max_tokens (finish_reason "length") before it gave the verdict or answer asked for.

    Mapped like a rejection (502, not retried, never cached): asking again with the same token budget gives
    the same cut; the message names the setting to raise.
    """


class MLLMNotConfigured(MLLMError):
    """No base URL or no model is set; the message names the ``ETCHR_`` variables to set."""


@dataclass(frozen=True)
class ChatResult:
    """The texts of ``n`` decodings, who answered, and how many HTTP requests it took (usage accounting).

    A text is never blank unless its decoding was truncated (a thinking model can spend all of max_tokens
    before it writes any content): blank, untruncated replies are backend failures the client retried.
    """

    texts: list[str]
    backend: str
    requests: int
    # Per decoding: the backend stopped it at max_tokens (finish_reason "length"); callers decide whether
    # what was said before the cut still carries a verdict or an answer.
    truncated: list[bool] = field(default_factory=list)
    # Completion tokens the backends reported (``usage.completion_tokens``) over the requests that answered;
    # 0 when a backend reports no usage.
    completion_tokens: int = 0
    # Prompt tokens likewise (``usage.prompt_tokens``): with completion_tokens, what callers charge.
    prompt_tokens: int = 0

    def was_truncated(self, index: int) -> bool:
        return index < len(self.truncated) and self.truncated[index]


# ---------------------------------------------------------------------------------------------- messages


def image_part(image: MLLMImage | Image.Image | bytes, mime: str = "image/png") -> dict[str, Any]:
    """A chat content part carrying ``image`` as a data URL: an :class:`MLLMImage` as it is (its URL built
    once, reused by every call), PIL images encoded as PNG, bytes labelled ``mime``."""
    if isinstance(image, MLLMImage):
        url = image.data_url
    else:
        if isinstance(image, Image.Image):
            image, mime = encode_png(image), "image/png"
        url = f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def user_message(text: str, images: Sequence[MLLMImage | Image.Image | bytes] = ()) -> dict[str, Any]:
    """A user message: the images first, then the text (the order VLMs are trained on)."""
    content = [image_part(image) for image in images]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


class ReplyListener(Protocol):
    """Receives a reply's text as the backend streams it (``MLLMClient.chat(..., listener=...)``)."""

    def delta(self, text: str) -> None:
        """The next piece of the reply's content."""

    def restart(self) -> None:
        """The attempt that sent the pieces so far failed; the reply starts again (another try or backend)."""


# ------------------------------------------------------------------------------------------------ client


def cap_reply(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail with the cut marked in between.

    The tail is kept because that is where reasoning replies put the final answer or verdict, the head
    because verdict-first replies open with it; the result, marker included, is at most ``limit`` long.
    """
    if len(text) <= limit:
        return text

    def marker(cut: int) -> str:
        return f"\n[… {cut:,} characters cut …]\n"

    kept = max(0, limit - len(marker(len(text))))  # the widest the marker can get
    head = kept // 2
    tail = kept - head
    return text[:head] + marker(len(text) - kept) + (text[-tail:] if tail else "")


@dataclass(frozen=True)
class _Decoding:
    text: str
    truncated: bool


def _usable(choices: Sequence[Any], limit: int) -> list[_Decoding]:
    """The choices a caller may see, capped: null, empty or blank content is dropped (a backend failure),
    unless the decoding was cut at max_tokens, whose emptiness is the caller's to judge (a too-small budget,
    not a sick backend: asking again would give the same cut)."""
    usable = []
    for choice in choices:
        content = choice.message.content
        truncated = choice.finish_reason == "length"
        if not isinstance(content, str) or not content.strip():
            if not truncated:
                continue
            content = ""
        usable.append(_Decoding(cap_reply(content, limit), truncated))
    return usable


def _tokens(completion: Any, kind: str) -> int:
    """``usage.<kind>`` (prompt_tokens, completion_tokens) of a chat completion, 0 when none is reported."""
    tokens = getattr(getattr(completion, "usage", None), kind, None)
    return tokens if isinstance(tokens, int) else 0


class _StreamBroken(Exception):
    """A streamed reply that broke off after it began (the connection dropped, an error event)."""


@dataclass(frozen=True)
class _Message:
    content: str


@dataclass(frozen=True)
class _Choice:
    """A streamed reply put back together, shaped like a completion's choice for ``_usable``."""

    message: _Message
    finish_reason: str | None


@dataclass(frozen=True)
class _Streamed:
    """A streamed completion put back together: its one choice and its usage (the last chunk's)."""

    choices: list[_Choice]
    usage: Any


async def _collect_stream(stream: Any, listener: ReplyListener) -> _Streamed:
    """Read a streamed completion (one choice), handing each content piece to ``listener`` as it comes."""
    pieces: list[str] = []
    finish: str | None = None
    usage: Any = None
    async for chunk in stream:
        usage = getattr(chunk, "usage", None) or usage
        for choice in chunk.choices or []:
            text = getattr(choice.delta, "content", None) if choice.delta is not None else None
            if text:
                pieces.append(text)
                listener.delta(text)
            finish = choice.finish_reason or finish
    return _Streamed([_Choice(_Message("".join(pieces)), finish)], usage)


def _attempts(request: Any) -> int:
    """HTTP requests the openai client made for one call: it stamps each try with its retry count."""
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) + 1
    except (AttributeError, ValueError):
        return 1


def _describe(err: Exception) -> str:
    """A short, log-safe description of what went wrong with one backend."""
    if isinstance(err, openai.APITimeoutError):
        return "request timed out"
    if isinstance(err, openai.APIStatusError):
        body = err.body
        message = body.get("message") if isinstance(body, dict) else None
        detail = str(message if message is not None else body if body is not None else err.message)
        return f"HTTP {err.status_code}: {detail[:300]}"
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__
        return f"connection failed ({type(cause).__name__}: {cause})" if cause else "connection failed"
    return f"{type(err).__name__}: {str(err)[:300]}"


class _OrjsonBodiesOpenAI(openai.AsyncOpenAI):
    """``AsyncOpenAI`` whose JSON request bodies are encoded by orjson.

    The SDK encodes with ``json.dumps``: 5-9 ms of CPU per request holding two 512² data URLs, a third of the
    reward service's CPU at 512² (docs/benchmarks.md); orjson takes 0.1 ms. The SDK sends a ``bytes`` body as
    it is. ``_build_request`` is the SDK's one hook for this (pinned to the 3.x line in pyproject); a body
    orjson cannot encode takes the SDK's own path.
    """

    def _build_request(self, options: Any, *, retries_taken: int = 0) -> httpx.Request:
        data = options.json_data
        if isinstance(data, dict) and options.extra_json is None and not options.files:
            try:
                encoded = orjson.dumps(data)
            except TypeError:
                pass
            else:
                options = options.model_copy(update={"json_data": encoded})
        return super()._build_request(options, retries_taken=retries_taken)


class MLLMClient:
    """A pool of OpenAI-compatible backends serving the same model; see the module docstring."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        timeout_s: float = 120,
        max_retries: int = 2,
        concurrency: int = 64,
        cooldown_s: float = 10.0,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
        not_configured: str = "no MLLM is configured: set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL",
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_reply_chars < 256:  # room for a head, a tail and the cut marker
            raise ValueError(f"max_reply_chars must be at least 256, got {max_reply_chars}")
        self._backends = list(backends)
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._max_reply_chars = max_reply_chars
        self._cooldown_s = cooldown_s
        self._concurrency = concurrency
        self._not_configured = not_configured
        # AsyncOpenAI binds nothing to an event loop until its first request, so building them here is safe.
        self._clients = [
            _OrjsonBodiesOpenAI(
                base_url=backend.base_url,
                api_key=backend.api_key or "EMPTY",
                timeout=timeout_s,
                max_retries=max_retries,
            )
            for backend in self._backends
        ]
        self._semaphore: asyncio.Semaphore | None = None  # made inside the running loop, on first use
        self._cursor = 0  # round-robin start for the next request
        self._down_until: dict[int, float] = {}  # backend index -> monotonic time its cool-down ends

    @classmethod
    def from_settings(cls, settings: MLLMSettings, role: Literal["mllm", "judge"] = "mllm") -> MLLMClient:
        """The client for U (``mllm``) or J (``judge``; each judge setting falls back to the MLLM's)."""
        urls, api_key, model = settings.mllm_base_url, settings.mllm_api_key, settings.mllm_model
        if role == "judge":
            urls = settings.judge_base_url or urls
            api_key = settings.judge_api_key if settings.judge_api_key is not None else api_key
            model = settings.judge_model or model
        missing = [name for name, value in (("BASE_URL", urls), ("MODEL", model)) if not value]
        if role == "judge":
            variables = " and ".join(f"ETCHR_JUDGE_{name} (or ETCHR_MLLM_{name})" for name in missing)
        else:
            variables = " and ".join(f"ETCHR_MLLM_{name}" for name in missing)
        backends = [Backend(url, api_key, model) for url in urls] if model else []
        return cls(
            backends,
            timeout_s=settings.mllm_timeout_s,
            max_retries=settings.mllm_max_retries,
            concurrency=settings.mllm_concurrency,
            cooldown_s=settings.mllm_backend_cooldown_s,
            max_reply_chars=settings.mllm_max_reply_chars,
            not_configured=f"no {'judge' if role == 'judge' else 'MLLM'} is configured: set {variables}",
        )

    @classmethod
    def pair_from_settings(cls, settings: MLLMSettings) -> tuple[MLLMClient, MLLMClient]:
        """(U, J). When the judge is the same model on the same backends, ONE client (one pool) serves both,
        so ``ETCHR_MLLM_CONCURRENCY`` bounds what those backends see in all, not per role."""
        mllm, judge = cls.from_settings(settings, "mllm"), cls.from_settings(settings, "judge")
        if judge._backends == mllm._backends:
            return mllm, mllm
        return mllm, judge

    async def close_pair(self, other: MLLMClient) -> None:
        """Close this client and ``other`` (once, when they are the same pool)."""
        await self.aclose()
        if other is not self:
            await other.aclose()

    @property
    def configured(self) -> bool:
        return bool(self._backends)

    def require_configured(self) -> None:
        """Raise :class:`MLLMNotConfigured` now, before a caller spends work (an edit) it could not use."""
        if not self._backends:
            raise MLLMNotConfigured(self._not_configured)

    @property
    def max_reply_chars(self) -> int:
        """Replies longer than this are capped (``cap_reply``): a streaming caller must know where."""
        return self._max_reply_chars

    @property
    def labels(self) -> list[str]:
        return [backend.label for backend in self._backends]

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        n: int = 1,
        listener: ReplyListener | None = None,
        **extra: Any,
    ) -> ChatResult:
        """``n`` decodings of one chat; ``extra`` goes to ``chat.completions.create`` as is.

        With a ``listener`` (``n`` must be 1) the reply is streamed and its content handed over as it comes
        (the verifier's chat facade passes U's answer through); the result is the same as without.

        ``n`` is asked for in one request; a backend that answers fewer choices is asked again for the rest.
        So is one whose reply has some blank choices among good ones: the good ones are kept and only the
        missing decodings are asked for again (each round keeps at least one, so this ends). A reply whose
        choices are all blank (or that has none) is retried, then failed over (see ``_complete``). Every
        HTTP request counts in ``ChatResult.requests``; each text is capped at ``max_reply_chars``.
        """
        self.require_configured()
        if n < 1 or (listener is not None and n != 1):
            raise ValueError(f"n must be at least 1 (exactly 1 with a listener), got {n}")
        texts: list[str] = []
        truncated: list[bool] = []
        answered: list[str] = []
        requests = tokens = prompt_tokens = 0
        while len(texts) < n:
            wanted = n - len(texts)
            got, backend, made, spent = await self._complete(
                messages, temperature, max_tokens, wanted, extra, listener
            )
            for decoding in got[:wanted]:
                texts.append(decoding.text)
                truncated.append(decoding.truncated)
            requests += made
            tokens += spent[1]
            prompt_tokens += spent[0]
            if backend.label not in answered:
                answered.append(backend.label)
        return ChatResult(
            texts=texts,
            backend=", ".join(answered),
            requests=requests,
            truncated=truncated,
            completion_tokens=tokens,
            prompt_tokens=prompt_tokens,
        )

    async def ping(self) -> str | None:
        """``None`` when at least one backend answers ``GET /models``, else why none did (for /readyz)."""
        if not self._backends:
            return self._not_configured
        problems = await asyncio.gather(*(self._ping_one(index) for index in range(len(self._backends))))
        if any(problem is None for problem in problems):
            return None
        return "no MLLM backend is reachable: " + "; ".join(p for p in problems if p)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients))

    # ------------------------------------------------------------------------------------------ internals

    def _slots(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._concurrency)
        return self._semaphore

    def _order(self) -> list[int]:
        """Backends to try, round-robin from a moving start; cooling-down ones only after the rest."""
        count = len(self._backends)
        start, self._cursor = self._cursor % count, self._cursor + 1
        rotated = [(start + offset) % count for offset in range(count)]
        now = time.monotonic()
        ready = [index for index in rotated if self._down_until.get(index, 0.0) <= now]
        return ready + [index for index in rotated if index not in ready]

    async def _complete(
        self,
        messages: list[dict[str, Any]],
        temperature: float,
        max_tokens: int | None,
        n: int,
        extra: dict[str, Any],
        listener: ReplyListener | None = None,
    ) -> tuple[list[_Decoding], Backend, int, tuple[int, int]]:
        """One completion request, failed over across backends: (usable decodings, who answered, HTTP
        requests made, (prompt, completion) tokens of the reply used).

        A backend answering 200 with no usable choice (none at all, or only null/empty/blank content) is
        asked again up to ``max_retries`` times after a short backoff — the openai client only retries on
        statuses — then counts as failed like one answering 5xx: cooled down, and the next backend is tried.
        """
        failures: list[str] = []
        made = 0
        options = dict(extra)
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        if listener is not None:
            options.update(stream=True, stream_options={"include_usage": True})
        streamed = False  # a listener has had pieces of an attempt that then failed: tell it on the next
        for index in self._order():
            backend, client = self._backends[index], self._clients[index]
            for attempt in range(self._max_retries + 1):
                if attempt:
                    backoff = _EMPTY_RETRY_BACKOFF_S * 2 ** (attempt - 1)
                    await asyncio.sleep(min(backoff, _EMPTY_RETRY_BACKOFF_MAX_S))
                try:
                    async with self._slots():
                        raw = await client.chat.completions.with_raw_response.create(
                            model=backend.model, messages=messages, temperature=temperature, n=n, **options
                        )
                        made += raw.retries_taken + 1
                        parsed = raw.parse()
                        if listener is not None:
                            if streamed:
                                listener.restart()
                            streamed = True
                            try:
                                parsed = await _collect_stream(parsed, listener)
                            except (openai.APIError, httpx.HTTPError) as err:
                                raise _StreamBroken(_describe(err)) from err
                    choices = parsed.choices or []
                    decodings = _usable(choices, self._max_reply_chars)
                except openai.APIStatusError as err:
                    made += _attempts(err.response.request)
                    if err.status_code < 500 and err.status_code not in _TRANSIENT_4XX:
                        raise MLLMRejected(
                            f"MLLM {backend.label} rejected the request: {_describe(err)}", backend.label
                        ) from err
                    failure = _describe(err)
                except openai.APIError as err:  # connection refused, timeout, a response that is not JSON
                    made += _attempts(err.request)
                    failure = _describe(err)
                except _StreamBroken as err:  # cut mid-reply: the openai client does not retry that
                    failure = f"stream broke mid-reply: {err}"
                    if attempt < self._max_retries:
                        continue
                except (ValueError, TypeError, AttributeError) as err:  # a 200 that is no chat completion
                    failure = f"invalid response ({type(err).__name__}: {err})"
                else:
                    if decodings:
                        self._down_until.pop(index, None)
                        tokens = (_tokens(parsed, "prompt_tokens"), _tokens(parsed, "completion_tokens"))
                        return decodings, backend, made, tokens
                    failure = (
                        "answered with empty content (null, empty or blank message.content)"
                        if choices
                        else "answered with no choices"
                    )
                    if attempt < self._max_retries:
                        continue
                    if self._max_retries:
                        failure += f", {self._max_retries + 1} times"
                break
            self._down_until[index] = time.monotonic() + self._cooldown_s
            failures.append(f"{backend.label}: {failure}")
        raise MLLMUnavailable("no MLLM backend answered: " + "; ".join(failures), ", ".join(self.labels))

    async def _ping_one(self, index: int) -> str | None:
        backend = self._backends[index]
        client = self._clients[index].with_options(
            timeout=min(_PING_TIMEOUT_S, self._timeout_s), max_retries=0
        )
        try:
            await client.models.list()
        except openai.APIError as err:
            return f"{backend.label}: {_describe(err)}"
        return None
