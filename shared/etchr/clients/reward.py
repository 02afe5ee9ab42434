"""The RL trainer's typed client for the reward service (docs/api.md: ``POST /reward``, ``POST /filter``).

A training step scores hundreds of edits; one huge request would hit the body limit and lose everything to
one transient failure. So the client splits the items into chunks (never splitting a group: one item is one
group), sends chunks concurrently, retries a chunk on failures that are worth retrying, and reassembles one
result aligned with the input order. Scoring is a pure function of its inputs (and cached by content on the
server), so re-sending a chunk is harmless.

It never returns partial or invented rewards: a chunk that still fails after its retries, a non-retryable
error, or a response that does not match what was sent raises :class:`RewardServiceError`, and a policy
update must not happen on the step.

The request building, response checking and retry decisions live in one I/O-free ``_Core`` shared by
:class:`RewardClient` (sync, ``httpx.Client``) and :class:`AsyncRewardClient` (``httpx.AsyncClient``);
each adds only its own send loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx
import orjson
from pydantic import BaseModel

from etchr.protocol.errors import error_detail
from etchr.protocol.reward import (
    AdvantageMode,
    FilterItem,
    FilterRequest,
    FilterResponse,
    FilterResult,
    ItemReward,
    RewardItem,
    RewardRequest,
    RewardResponse,
    RewardUsage,
)

__all__ = [
    "AsyncRewardClient",
    "FilterOutcome",
    "RewardClient",
    "RewardResult",
    "RewardServiceError",
]

log = logging.getLogger(__name__)

# 429/503: the service's queue is full or a dependency is down (it sends Retry-After); 502/504: a proxy or
# the service's own deadline gave up, and the server-side cache makes the retry cheaper than the first try.
# Any other 4xx (bad input, auth, 413) and 500 (a bug) would fail identically again.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# ...except a 503 that only an operator can fix: no MLLM configured would fail identically on every retry.
_FINAL_TYPES = frozenset({"mllm_not_configured"})
# A dead host should fail fast; only the read waits the full timeout (scoring a chunk takes minutes).
_CONNECT_TIMEOUT_S = 10.0
# JSON framing and the small fields of an item, on top of its images, when sizing a chunk.
_ITEM_OVERHEAD_BYTES = 1024

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P")


class RewardServiceError(Exception):
    """The reward service did not give a usable answer; no rewards are returned for the call.

    ``status`` is the HTTP status (``None`` when no response came: connection error or timeout), ``type``
    and ``message`` the service's error body (docs/api.md) or the client's own description (``"timeout"``,
    ``"connection_error"``, ``"bad_response"``), ``request_id`` the ``x-request-id`` to grep server logs for.
    """

    def __init__(self, message: str, *, status: int | None, type: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.request_id = request_id

    def __str__(self) -> str:
        status = "no response" if self.status is None else f"HTTP {self.status}"
        return f"{self.type} ({status}, request {self.request_id}): {self.message}"


@dataclass
class RewardResult:
    """Rewards for every input item, in input order, with usage summed over the sub-requests."""

    items: list[ItemReward]
    usage: RewardUsage


@dataclass
class FilterOutcome:
    """Eq. 1 verdicts for every input item, in input order, with usage summed over the sub-requests."""

    items: list[FilterResult]
    usage: RewardUsage

    @property
    def keep(self) -> list[str]:
        """Ids of the items to keep for RL, in input order."""
        return [item.id for item in self.items if item.keep]


class _BadResponse(ValueError):
    """A 2xx response that does not answer the request that was sent."""


@dataclass(frozen=True)
class _Call(Generic[P]):
    """One sub-request: what to send, and how to turn the 2xx body into this chunk's part of the result."""

    path: str
    body: bytes  # the JSON, encoded once however many attempts send it
    request_id: str  # the same on every retry, so server logs show them as one call
    parse: Callable[[bytes], P]


@dataclass(frozen=True)
class _Retry:
    delay_s: float


_Part = tuple[list[Any], RewardUsage]


def _coerce(items: Sequence[M | Mapping[str, Any]], model: type[M]) -> list[M]:
    """Items as ``model`` instances; plain dicts are validated here, before anything is sent."""
    if isinstance(items, Mapping | str | bytes | BaseModel):
        kind = type(items).__name__
        raise TypeError(f"items must be a sequence of {model.__name__} or dicts, not a single {kind}")
    return [item if isinstance(item, model) else model.model_validate(item) for item in items]


def _approx_bytes(item: RewardItem | FilterItem) -> int:
    """Rough JSON size of an item: its base64 images dominate and need no escaping."""
    images = item.edits if isinstance(item, RewardItem) else [item.edited_image]
    text = len(item.question) + len(item.answer)
    return len(item.image) + sum(len(image) for image in images) + text + _ITEM_OVERHEAD_BYTES


def _encode(body: dict[str, Any]) -> bytes:
    """The request's JSON. orjson, not ``httpx``'s ``json=`` (the standard library's encoder): a chunk is
    tens of MB of base64, which json.dumps escapes at ~0.3 GB/s and orjson at ~4 GB/s; the trainer's CPU (and
    at 512², its GIL) is spent on rollouts, not on escaping images. What orjson refuses (an integer beyond
    64 bits in ``meta``) goes through the standard library as before."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body).encode()


def _check_ids(sent: Sequence[str], got: Sequence[str]) -> None:
    if list(sent) != list(got):
        raise _BadResponse(f"response ids {list(got)[:8]} do not match the request's {list(sent)[:8]}")


def _sum_usage(usages: Sequence[RewardUsage]) -> RewardUsage:
    return RewardUsage(**{name: sum(getattr(u, name) for u in usages) for name in RewardUsage.model_fields})


def _merge(parts: Sequence[_Part]) -> _Part:
    return [item for items, _ in parts for item in items], _sum_usage([usage for _, usage in parts])


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """The server's requested wait: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        if (value := headers.get("retry-after")) is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None  # unparseable: fall back to our own backoff


def _http_error(response: httpx.Response, request_id: str) -> RewardServiceError:
    detail = error_detail(response.status_code, response.content)
    error_type, message = detail.type, detail.message
    if response.status_code == 413:
        message += " (lower max_request_bytes or max_items_per_request)"
    return RewardServiceError(
        message,
        status=response.status_code,
        type=error_type,
        request_id=response.headers.get("x-request-id", request_id),
    )


class _Core:
    """Everything both clients share that does no I/O: chunking, request bodies, checks, retry policy."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        max_items_per_request: int,
        max_request_bytes: int,
        retries: int,
        backoff_s: float,
        max_retry_wait_s: float,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_items_per_request < 1 or max_request_bytes < 1:
            raise ValueError("max_items_per_request and max_request_bytes must be >= 1")
        if retries < 0 or backoff_s < 0 or max_retry_wait_s < 0:
            raise ValueError("retries, backoff_s and max_retry_wait_s must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_items_per_request = max_items_per_request
        self.max_request_bytes = max_request_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_wait_s = max_retry_wait_s

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client`` / ``httpx.AsyncClient``."""
        headers = {"user-agent": "etchr-reward-client"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, _CONNECT_TIMEOUT_S))
        return {"base_url": self.base_url, "headers": headers, "timeout": timeout}

    def _chunks(self, items: Sequence[M], spread: int = 1) -> list[list[M]]:
        """Consecutive runs of at most ``max_items_per_request`` items and about ``max_request_bytes``,
        and, with ``spread`` requests allowed in flight, at least that many chunks when there are enough
        items: the service starts a chunk's queries only once its body has arrived and its images are
        checked, so a few big chunks leave the MLLM idle while they travel and slots unused.

        An item is never split (it is one group); one bigger than the byte budget goes alone and the
        server's 413, if any, says so.
        """
        per_chunk = min(self.max_items_per_request, max(1, -(-len(items) // spread)))
        chunks: list[list[M]] = []
        current: list[M] = []
        size = 0
        for item in items:
            item_size = _approx_bytes(item)  # type: ignore[arg-type]
            if current and (len(current) >= per_chunk or size + item_size > self.max_request_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += item_size
        if current:
            chunks.append(current)
        return chunks

    def reward_calls(
        self,
        items: Sequence[RewardItem | Mapping[str, Any]],
        *,
        alpha: float,
        k: int,
        advantage: AdvantageMode,
        correctness_images: Literal["both", "edit"] | None = None,
        spread: int = 1,
    ) -> list[_Call[_Part]]:
        calls: list[_Call[_Part]] = []
        for chunk in self._chunks(_coerce(items, RewardItem), spread):
            # Validates alpha/k/advantage too, before the first request of the call is sent.
            request = RewardRequest(
                items=chunk, alpha=alpha, k=k, advantage=advantage, correctness_images=correctness_images
            )
            body = _encode(request.model_dump(mode="json"))
            calls.append(_Call("/reward", body, uuid.uuid4().hex, self._reward_parser(chunk, advantage)))
        return calls

    @staticmethod
    def _reward_parser(chunk: list[RewardItem], advantage: AdvantageMode) -> Callable[[bytes], _Part]:
        def parse(content: bytes) -> _Part:
            response = RewardResponse.model_validate_json(content)
            _check_ids([item.id for item in chunk], [item.id for item in response.items])
            for sent, got in zip(chunk, response.items, strict=True):
                group = len(sent.edits)
                lengths = [len(got.rewards)]
                lengths += [len(values) for values in (got.win_rates, got.advantages) if values is not None]
                if any(n != group for n in lengths):
                    raise _BadResponse(f"item {sent.id!r}: sent {group} edits, got per-edit lists {lengths}")
                if advantage != "none" and got.advantages is None:
                    raise _BadResponse(f"item {sent.id!r}: no advantages in {advantage!r} mode")
            return response.items, response.usage

        return parse

    def filter_calls(
        self, items: Sequence[FilterItem | Mapping[str, Any]], *, k: int | None, greedy: bool, spread: int = 1
    ) -> list[_Call[_Part]]:
        calls: list[_Call[_Part]] = []
        for chunk in self._chunks(_coerce(items, FilterItem), spread):
            # Validated here (greedy with k > 1 is the caller's error), sent with k = the decodings it means.
            request = FilterRequest(items=chunk, greedy=greedy, **({} if k is None else {"k": k}))
            body = _encode({**request.model_dump(mode="json"), "k": request.decodings})
            ids = [item.id for item in chunk]

            def parse(content: bytes, ids: list[str] = ids) -> _Part:
                response = FilterResponse.model_validate_json(content)
                _check_ids(ids, [item.id for item in response.items])
                return response.items, response.usage

            calls.append(_Call("/filter", body, uuid.uuid4().hex, parse))
        return calls

    def settle(
        self,
        call: _Call[P],
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> P | _Retry:
        """This attempt's outcome: the parsed part, a wait before the next attempt, or a raised error."""
        if response is not None and response.is_success:
            try:
                return call.parse(response.content)
            except ValueError as exc:  # pydantic's ValidationError is one, and so is _BadResponse
                raise RewardServiceError(
                    f"POST {call.path} answered with an unusable body: {exc}",
                    status=response.status_code,
                    type="bad_response",
                    request_id=response.headers.get("x-request-id", call.request_id),
                ) from None
        wait: float | None = None
        if response is not None:
            failure = _http_error(response, call.request_id)
            if response.status_code not in _RETRY_STATUSES or failure.type in _FINAL_TYPES:
                raise failure
            wait = _retry_after_s(response.headers)
        else:
            timed_out = isinstance(error, httpx.TimeoutException)
            failure = RewardServiceError(
                f"POST {self.base_url}{call.path}: {type(error).__name__}: {error}",
                status=None,
                type="timeout" if timed_out else "connection_error",
                request_id=call.request_id,
            )
        if attempt >= self.retries:
            raise RewardServiceError(
                f"{failure.message} (gave up after {attempt + 1} attempts)",
                status=failure.status,
                type=failure.type,
                request_id=failure.request_id,
            )
        delay = min(self.max_retry_wait_s, wait if wait is not None else self.backoff_s * 2**attempt)
        log.warning("reward service: %s; retry %d/%d in %.2f s", failure, attempt + 1, self.retries, delay)
        return _Retry(delay)


class _OneUploadAtATime:
    """A request body that goes on the wire only while no other body of the same client is on it.

    Bodies sent side by side share the link, so every one of them arrives when the last does, and the service
    starts a chunk's queries only once its whole body is in: the MLLM waits meanwhile. One at a time, the
    service checks and queues the first chunk while the next travels (at 512², eight 4 MB chunks: the first
    MLLM call 173-250 ms into the call before, 134-169 ms after; docs/benchmarks.md). Responses are still
    awaited side by side.
    """

    def __init__(self, lock: asyncio.Lock, body: bytes) -> None:
        self._lock = lock
        self._body = body
        self._held = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self._lock.acquire()
        self._held = True
        try:
            yield self._body
        finally:
            self.release()

    def release(self) -> None:
        """Idempotent: the sender calls it whatever happened, as a failed send may never finish iterating."""
        if self._held:
            self._held = False
            self._lock.release()


class AsyncRewardClient:
    """Async client: chunks of one call run concurrently, at most ``max_concurrent_requests`` in flight.

    The bound is per client, shared by concurrent calls, so several rollout workers sharing one client
    cannot overload the service between them. A retry's backoff does not hold a slot.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8003",
        *,
        api_key: str | None = None,
        timeout_s: float = 600,
        max_items_per_request: int = 32,
        max_request_bytes: int = 30 * 1024 * 1024,
        max_concurrent_requests: int = 4,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_retry_wait_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        self._core = _Core(
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_items_per_request=max_items_per_request,
            max_request_bytes=max_request_bytes,
            retries=retries,
            backoff_s=backoff_s,
            max_retry_wait_s=max_retry_wait_s,
        )
        self._slots = asyncio.Semaphore(max_concurrent_requests)
        self._uploading = asyncio.Lock()
        self._spread = max_concurrent_requests
        self._http = httpx.AsyncClient(transport=transport, **self._core.http_options())

    async def reward(
        self,
        items: Sequence[RewardItem | Mapping[str, Any]],
        *,
        alpha: float = 0.5,
        k: int = 4,
        advantage: AdvantageMode = "pref-grpo",
        correctness_images: Literal["both", "edit"] | None = None,
    ) -> RewardResult:
        """Rewards (and win rates / advantages per ``advantage``) for each item's group of edits;
        ``correctness_images`` picks what R_corr's judge sees (None: the service's setting)."""
        calls = self._core.reward_calls(
            items,
            alpha=alpha,
            k=k,
            advantage=advantage,
            correctness_images=correctness_images,
            spread=self._spread,
        )
        return RewardResult(*_merge(await self._send_all(calls)))

    async def filter(
        self,
        items: Sequence[FilterItem | Mapping[str, Any]],
        *,
        k: int | None = None,
        greedy: bool = False,
    ) -> FilterOutcome:
        """Eq. 1 verdicts: keep an item if U fails on I alone and succeeds given the ground-truth edit.

        Each clause is decided by a majority of ``k`` sampled decodings (the service's default, 4, when
        None), or by one greedy decoding with ``greedy=True``.
        """
        calls = self._core.filter_calls(items, k=k, greedy=greedy, spread=self._spread)
        return FilterOutcome(*_merge(await self._send_all(calls)))

    async def _send_all(self, calls: list[_Call[P]]) -> list[P]:
        if len(calls) == 1:
            return [await self._send(calls[0])]
        tasks = [asyncio.ensure_future(self._send(call)) for call in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One chunk failed (or the caller cancelled): the call has no result, so stop the others.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _send(self, call: _Call[P]) -> P:
        headers = {
            "x-request-id": call.request_id,
            "content-type": "application/json",
            "content-length": str(len(call.body)),
        }
        for attempt in itertools.count():
            body = _OneUploadAtATime(self._uploading, call.body)
            try:
                async with self._slots:
                    response = await self._http.post(call.path, content=body, headers=headers)
            except httpx.TransportError as exc:
                outcome = self._core.settle(call, attempt, error=exc)
            else:
                outcome = self._core.settle(call, attempt, response=response)
            finally:
                body.release()
            if not isinstance(outcome, _Retry):
                return outcome
            await asyncio.sleep(outcome.delay_s)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class RewardClient:
    """Synchronous client with the same API; chunks are sent one after another.

    For trainers without an event loop. It never starts one, so it is safe to call from threads and from
    code already inside a running loop (where ``asyncio.run`` would fail).
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8003",
        *,
        api_key: str | None = None,
        timeout_s: float = 600,
        max_items_per_request: int = 32,
        max_request_bytes: int = 30 * 1024 * 1024,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_retry_wait_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = _Core(
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_items_per_request=max_items_per_request,
            max_request_bytes=max_request_bytes,
            retries=retries,
            backoff_s=backoff_s,
            max_retry_wait_s=max_retry_wait_s,
        )
        self._http = httpx.Client(transport=transport, **self._core.http_options())

    def reward(
        self,
        items: Sequence[RewardItem | Mapping[str, Any]],
        *,
        alpha: float = 0.5,
        k: int = 4,
        advantage: AdvantageMode = "pref-grpo",
        correctness_images: Literal["both", "edit"] | None = None,
    ) -> RewardResult:
        """Rewards (and win rates / advantages per ``advantage``) for each item's group of edits;
        ``correctness_images`` picks what R_corr's judge sees (None: the service's setting)."""
        calls = self._core.reward_calls(
            items, alpha=alpha, k=k, advantage=advantage, correctness_images=correctness_images
        )
        return RewardResult(*_merge([self._send(call) for call in calls]))

    def filter(
        self,
        items: Sequence[FilterItem | Mapping[str, Any]],
        *,
        k: int | None = None,
        greedy: bool = False,
    ) -> FilterOutcome:
        """Eq. 1 verdicts: keep an item if U fails on I alone and succeeds given the ground-truth edit.

        Each clause is decided by a majority of ``k`` sampled decodings (the service's default, 4, when
        None), or by one greedy decoding with ``greedy=True``.
        """
        calls = self._core.filter_calls(items, k=k, greedy=greedy)
        return FilterOutcome(*_merge([self._send(call) for call in calls]))

    def _send(self, call: _Call[P]) -> P:
        headers = {"x-request-id": call.request_id, "content-type": "application/json"}
        for attempt in itertools.count():
            try:
                response = self._http.post(call.path, content=call.body, headers=headers)
            except httpx.TransportError as exc:
                outcome = self._core.settle(call, attempt, error=exc)
            else:
                outcome = self._core.settle(call, attempt, response=response)
            if not isinstance(outcome, _Retry):
                return outcome
            time.sleep(outcome.delay_s)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
