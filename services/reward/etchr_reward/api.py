"""The reward HTTP API: ``POST /reward`` (R_guid, R_corr, Pref-GRPO advantages), ``POST /filter`` (Eq. 1)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from etchr.answers import match_answer
from etchr.fast_json_route import FastJsonRoute
from etchr.http import ServiceError, redis_readiness, require_api_key
from etchr.http import create_app as create_service_app
from etchr.imaging import ImageLimits, check_image_bytes, decode_base64_bytes, image_mime
from etchr.protocol.reward import (
    EditReward,
    FilterItem,
    FilterRequest,
    FilterResponse,
    FilterResult,
    ItemReward,
    RewardItem,
    RewardRequest,
    RewardResponse,
)
from etchr.redis_client import connect_redis
from etchr.settings import RewardSettings
from etchr.tasks import JudgeImages
from etchr.workers import hosted_worker
from etchr_reward.advantages import combine, group_advantages
from etchr_reward.dispatch import PendingQuery, QueryDispatcher
from etchr_reward.jobs import ImageStore, reward_queue
from etchr_reward.metrics import RewardMetrics
from etchr_reward.scoring import Query, QueryImage, QueryKind, RewardScorer
from etchr_reward.worker import RewardWorker, build_scorer

logger = logging.getLogger("etchr.reward.api")

DEFAULT_TASK = "perception"
GREEDY_TEMPERATURE = 0.0  # Eq. 1's greedy decoding


@dataclass
class RewardRuntime:
    settings: RewardSettings
    scorer: RewardScorer
    dispatcher: QueryDispatcher
    limits: ImageLimits


def get_runtime(request: Request) -> RewardRuntime:
    return request.app.state.runtime


async def _image(data: str, limits: ImageLimits, where: str, param: str) -> QueryImage:
    """The encoded bytes, after checking they decode within the limits (the MLLM gets them unchanged), with
    their digest: prepared once per request, however many queries show the image.

    A PNG (what trainers send) is checked on the event loop: ~0.5 ms at 512² with its digest. In a thread,
    each of its chunk CRCs and the hash releases the GIL and then waits up to the 5 ms switch interval to
    get it back from the busy loop: up to ~40 ms per image, most of a request's time before its first query
    was queued. A JPEG or WebP is decoded to be checked, which takes longer and releases the GIL while it
    runs: that goes to a thread.
    """
    try:
        raw = decode_base64_bytes(data, limits)
        if image_mime(raw) == "image/png":
            check_image_bytes(raw, limits)
        else:
            await run_in_threadpool(check_image_bytes, raw, limits)
        return QueryImage.from_bytes(raw)
    except ValueError as exc:
        raise ServiceError(400, "invalid_image", f"{where}: {exc}", param=param) from None


def _check_ground_truth(item_id: str, answer: str, scorer: str | None, meta: dict | None) -> None:
    """A malformed ground truth (unknown scorer, bad maze meta) is the caller's error: 400, no query made."""
    try:
        match_answer("x", answer, scorer=scorer or "auto", meta=meta)
    except ValueError as exc:
        raise ServiceError(400, "invalid_field", f"item {item_id!r}: {exc}") from None


def _query(
    runtime: RewardRuntime,
    kind: QueryKind,
    item: RewardItem | FilterItem,
    images: tuple[QueryImage, ...],
    k: int,
    *,
    temperature: float | None = None,
    correctness_images: JudgeImages = "both",
) -> PendingQuery:
    """One query for ``item``; correctness queries carry no ground truth (the judge never sees it).

    ``temperature`` overrides the scorer's configured sampling temperature (Eq. 1's greedy decoding).
    """
    graded = kind != "correctness"
    query = Query(
        kind=kind,
        task=item.task or DEFAULT_TASK,
        question=item.question,
        answer=item.answer if graded else None,
        scorer=item.scorer if graded else None,
        meta=item.meta if graded else None,
        k=k,
        temperature=temperature,
        correctness_images=correctness_images,
    )
    return PendingQuery(runtime.scorer.digest(query, images), query, images)


def _check_request(runtime: RewardRuntime, items: Sequence[RewardItem | FilterItem], queries: int) -> None:
    """Everything about a request that is the caller's error, before any image is decoded or query made."""
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ServiceError(400, "invalid_field", "item ids must be unique within a request")
    if queries > runtime.settings.reward_max_queries:
        raise ServiceError(
            400,
            "too_many_queries",
            f"the request needs {queries} MLLM queries; the limit is {runtime.settings.reward_max_queries} "
            "(ETCHR_REWARD_MAX_QUERIES): split it (the Python client does)",
        )
    for item in items:
        _check_ground_truth(item.id, item.answer, item.scorer, item.meta)


def _timings(started: float, prepared: float) -> dict[str, float]:
    """Decoding and planning vs waiting for the queries, in ms."""
    return {
        "prepare_ms": round((prepared - started) * 1000, 2),
        "score_ms": round((time.perf_counter() - prepared) * 1000, 2),
    }


router = APIRouter(dependencies=[Depends(require_api_key)], route_class=FastJsonRoute)


@router.post("/reward", response_model=RewardResponse)
async def reward(body: RewardRequest, runtime: RewardRuntime = Depends(get_runtime)) -> RewardResponse:
    """Score G edits per item: guidance and correctness over k decodings, combined with α, then advantages."""
    started = time.perf_counter()
    _check_request(runtime, body.items, sum(2 * len(item.edits) for item in body.items))
    judge_images = body.correctness_images or runtime.settings.reward_correctness_images
    plan: list[list[tuple[PendingQuery, PendingQuery]]] = []
    for i, item in enumerate(body.items):
        await asyncio.sleep(0)  # between items, let the in-process worker's calls and replies run
        original = await _image(item.image, runtime.limits, f"item {item.id!r} image", f"items.{i}.image")
        group = []
        for g, edit in enumerate(item.edits):
            where = f"item {item.id!r} edits[{g}]"
            edited = await _image(edit, runtime.limits, where, f"items.{i}.edits.{g}")
            images = (original, edited)
            judged = images if judge_images == "both" else (edited,)
            group.append(
                (
                    _query(runtime, "guidance", item, images, body.k),
                    _query(runtime, "correctness", item, judged, body.k, correctness_images=judge_images),
                )
            )
        plan.append(group)
    prepared = time.perf_counter()
    resolution = await runtime.dispatcher.resolve(
        [query for group in plan for pair in group for query in pair]
    )
    items = []
    for item, group in zip(body.items, plan, strict=True):
        rewards = []
        for guidance_query, correctness_query in group:
            guidance = resolution.results[guidance_query.digest].score
            correctness = resolution.results[correctness_query.digest].score
            rewards.append(
                EditReward(
                    guidance=guidance,
                    correctness=correctness,
                    reward=combine(guidance, correctness, body.alpha),
                )
            )
        win_rates, advantages = group_advantages([r.reward for r in rewards], body.advantage)
        items.append(ItemReward(id=item.id, rewards=rewards, win_rates=win_rates, advantages=advantages))
    return RewardResponse(items=items, usage=resolution.usage, timings=_timings(started, prepared))


@router.post("/filter", response_model=FilterResponse)
async def filter_items(body: FilterRequest, runtime: RewardRuntime = Depends(get_runtime)) -> FilterResponse:
    """Eq. 1: keep (I, q, a, I_e*) only if U fails on I alone and succeeds given the ground-truth edit.

    Each clause is decided by a strict majority: U "fails alone" when it is right in under half of the k
    sampled decodings on I, and "succeeds with the edit" when it is right in over half of them on (I, I_e*);
    ``greedy`` decides each on one decoding at temperature 0 instead. The fractions are reported too, so
    callers can apply their own thresholds.
    """
    started = time.perf_counter()
    _check_request(runtime, body.items, 2 * len(body.items))
    decodings, temperature = body.decodings, GREEDY_TEMPERATURE if body.greedy else None
    plan = []
    for i, item in enumerate(body.items):
        await asyncio.sleep(0)
        original = await _image(item.image, runtime.limits, f"item {item.id!r} image", f"items.{i}.image")
        edited = await _image(
            item.edited_image, runtime.limits, f"item {item.id!r} edited_image", f"items.{i}.edited_image"
        )
        plan.append(
            (
                _query(runtime, "base", item, (original,), decodings, temperature=temperature),
                _query(runtime, "guidance", item, (original, edited), decodings, temperature=temperature),
            )
        )
    prepared = time.perf_counter()
    resolution = await runtime.dispatcher.resolve([query for pair in plan for query in pair])
    results = []
    for item, (base_query, edit_query) in zip(body.items, plan, strict=True):
        base = resolution.results[base_query.digest].score
        edit = resolution.results[edit_query.digest].score
        fails_alone, succeeds_with_edit = base < 0.5, edit > 0.5
        results.append(
            FilterResult(
                id=item.id,
                base_correct=base,
                edit_correct=edit,
                fails_alone=fails_alone,
                succeeds_with_edit=succeeds_with_edit,
                keep=fails_alone and succeeds_with_edit,
            )
        )
    return FilterResponse(
        keep=[result.id for result in results if result.keep],
        items=results,
        usage=resolution.usage,
        timings=_timings(started, prepared),
    )


def create_app(settings: RewardSettings | None = None) -> FastAPI:
    """The reward app; with ``ETCHR_REWARD_WORKER`` (default on) it runs a query worker in-process."""
    settings = settings or RewardSettings()
    metrics = RewardMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect_redis(settings)
        queue = reward_queue(client, settings)
        metrics.queue_depth.queue = queue
        scorer = build_scorer(settings)
        if not scorer.mllm.configured:
            logger.warning("no MLLM configured: set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL")
        app.state.client = client
        # With a worker in this process, the front hands it the images it checked (no read back from Redis).
        images = ImageStore.for_deadline(
            queue, settings.reward_deadline_s, keep_written=settings.reward_worker
        )
        app.state.runtime = RewardRuntime(
            settings=settings,
            scorer=scorer,
            dispatcher=QueryDispatcher(queue, metrics, deadline_s=settings.reward_deadline_s, images=images),
            limits=ImageLimits.from_settings(settings),
        )
        with suppress(Exception):  # Redis may be down at start; reads recreate the group when it returns
            await queue.ensure_group()
        worker = (
            RewardWorker(queue, scorer, metrics, max_in_flight=settings.reward_max_in_flight, images=images)
            if settings.reward_worker
            else None
        )
        try:
            async with hosted_worker(worker):
                yield
        finally:
            await scorer.mllm.close_pair(scorer.judge)
            await client.aclose()

    async def mllm_readiness() -> str | None:
        scorer: RewardScorer = app.state.runtime.scorer
        if not scorer.mllm.configured:
            return "no MLLM configured: set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL"
        return None

    app = create_service_app(
        title="ETCHR reward",
        settings=settings,
        metrics=metrics,
        lifespan=lifespan,
        readiness=[
            redis_readiness(lambda: app.state.client, key_prefix=settings.redis_prefix),
            mllm_readiness,
        ],
    )
    app.include_router(router)
    return app
