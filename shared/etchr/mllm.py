"""The OpenAI-compatible client pool every service uses to talk to the understanding model U and the judge J.

One ``openai.AsyncOpenAI`` per backend URL does the HTTP work, including its own retries with backoff on
429/5xx/timeouts (honouring ``Retry-After``). On top of that this module adds what a pool of self-hosted
backends needs: fail-over to the next backend when one's retries are exhausted (round-robin start so load
spreads, a failed backend cooled down for a while), a bound on in-flight requests, ``n`` decodings even on
backends that ignore ``n``, and errors a service can map to an honest status (503 / 502) — never a silent
empty answer.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from PIL import Image

from etchr.imaging import encode_png
from etchr.settings import MLLMSettings

__all__ = [
    "Backend",
    "ChatResult",
    "MLLMClient",
    "MLLMError",
    "MLLMNotConfigured",
    "MLLMRejected",
    "MLLMUnavailable",
    "image_part",
    "parse_verdict",
    "user_message",
]

# 4xx statuses the openai client itself retries (request timeout, lock timeout, rate limit): a backend
# still failing with one of these after its retries is unavailable, not rejecting the request.
_TRANSIENT_4XX: frozenset[int] = frozenset({408, 409, 429})
# Readiness probes must answer fast even when a backend black-holes packets.
_PING_TIMEOUT_S = 5.0


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


class MLLMNotConfigured(MLLMError):
    """No base URL or no model is set; the message names the ``ETCHR_`` variables to set."""


@dataclass(frozen=True)
class ChatResult:
    """The texts of ``n`` decodings, who answered, and how many HTTP requests it took (usage accounting)."""

    texts: list[str]
    backend: str
    requests: int


# ---------------------------------------------------------------------------------------------- messages


def image_part(image: Image.Image | bytes, mime: str = "image/png") -> dict[str, Any]:
    """A chat content part carrying ``image`` as a data URL (PIL images are encoded as PNG)."""
    if isinstance(image, Image.Image):
        image, mime = encode_png(image), "image/png"
    url = f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def user_message(text: str, images: Sequence[Image.Image | bytes] = ()) -> dict[str, Any]:
    """A user message: the images first, then the text (the order VLMs are trained on)."""
    content = [image_part(image) for image in images]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


# ---------------------------------------------------------------------------------------------- verdicts

_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
# yes/no/true/false as words; 1/0 only as a whole number (not "10", "0.5" or "1,000").
_VERDICT = re.compile(r"\b(yes|no|true|false)\b|(?<![\w.,])([01])(?![\w]|[.,]\d)", re.IGNORECASE)
# "yes or no", "1/0", "yes and no": two different verdicts joined like this leave the answer open.
_ALTERNATIVE = re.compile(r"^[\s*_`'\"()\[\]]*(?:or|and|/|\|)[\s*_`'\"()\[\]]*$", re.IGNORECASE)
_VALUES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def parse_verdict(text: str | None) -> bool | None:
    """A 1/0 (yes/no) verdict read tolerantly, or ``None`` when there is none to trust.

    Reasoning in ``<think>`` blocks is dropped (text after a bare ``</think>`` is the answer); a
    ``\\boxed{…}`` answer wins; otherwise the last verdict-like token counts, unless it is one side of an
    alternative such as "yes or no". Callers treat ``None`` as "not reliable".
    """
    if not text:
        return None
    text = text.rsplit("</think>", 1)[-1] if "</think>" in text.lower() else text
    text = _THINK_BLOCK.sub(" ", text)
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    tokens = list(_VERDICT.finditer(text))
    if not tokens:
        return None
    last = tokens[-1]
    verdict = _VALUES[last.group(0).lower()]
    if len(tokens) > 1:
        before = tokens[-2]
        joined = _ALTERNATIVE.match(text[before.end() : last.start()])
        if joined and _VALUES[before.group(0).lower()] != verdict:
            return None
    return verdict


# ------------------------------------------------------------------------------------------------ client


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
        not_configured: str = "no MLLM is configured: set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL",
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._backends = list(backends)
        self._timeout_s = timeout_s
        self._cooldown_s = cooldown_s
        self._concurrency = concurrency
        self._not_configured = not_configured
        # AsyncOpenAI binds nothing to an event loop until its first request, so building them here is safe.
        self._clients = [
            openai.AsyncOpenAI(
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
    def labels(self) -> list[str]:
        return [backend.label for backend in self._backends]

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        n: int = 1,
        **extra: Any,
    ) -> ChatResult:
        """``n`` decodings of one chat; ``extra`` goes to ``chat.completions.create`` as is.

        ``n`` is asked for in one request; a backend that answers fewer choices is asked again for the rest.
        """
        self.require_configured()
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        texts: list[str] = []
        answered: list[str] = []
        requests = 0
        while len(texts) < n:
            wanted = n - len(texts)
            got, backend, made = await self._complete(messages, temperature, max_tokens, wanted, extra)
            texts.extend(got[: n - len(texts)])
            requests += made
            if backend.label not in answered:
                answered.append(backend.label)
        return ChatResult(texts=texts, backend=", ".join(answered), requests=requests)

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
    ) -> tuple[list[str], Backend, int]:
        """One completion request, failed over across backends: (texts, who answered, HTTP requests made)."""
        failures: list[str] = []
        made = 0
        options = dict(extra)
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        for index in self._order():
            backend, client = self._backends[index], self._clients[index]
            try:
                async with self._slots():
                    raw = await client.chat.completions.with_raw_response.create(
                        model=backend.model, messages=messages, temperature=temperature, n=n, **options
                    )
                made += raw.retries_taken + 1
                texts = [choice.message.content or "" for choice in raw.parse().choices or []]
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
            except (ValueError, TypeError, AttributeError) as err:  # a 200 body that is no chat completion
                failure = f"invalid response ({type(err).__name__}: {err})"
            else:
                if texts:
                    self._down_until.pop(index, None)
                    return texts, backend, made
                failure = "answered with no choices"
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
