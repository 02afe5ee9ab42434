"""Reward query workers: pull queries from the stream and keep up to N in flight against the backends.

The MLLM client bounds what actually reaches the backends (``ETCHR_MLLM_CONCURRENCY``); the worker only keeps
enough queries in hand to saturate it. Errors are stored on the query (never a made-up score), so the API
answers 503/502 naming the backend.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import redis.exceptions
from pydantic import ValidationError

from etchr.mllm import MLLMClient, MLLMError, MLLMIncomplete, MLLMNotConfigured, MLLMRejected
from etchr.prompts import AnswerPrompts
from etchr.queue import Delivery, JobQueue
from etchr.redis_client import RedisBackoff, connect_redis
from etchr.settings import RewardSettings
from etchr.tasks import TaskRegistry
from etchr.workers import run_worker_process
from etchr_reward.jobs import (
    ImagesGone,
    ImageStore,
    QueryError,
    QueryErrorType,
    lock_key,
    read_query,
    reward_queue,
)
from etchr_reward.metrics import RewardMetrics
from etchr_reward.scoring import QueryImage, RewardScorer

logger = logging.getLogger("etchr.reward.worker")

READ_BLOCK_MS = 200
RECLAIM_EVERY_S = 1.0


def build_scorer(settings: RewardSettings) -> RewardScorer:
    mllm, judge = MLLMClient.pair_from_settings(settings)
    return RewardScorer(
        mllm=mllm,
        judge=judge,
        tasks=TaskRegistry.from_file(settings.tasks_file),
        prompts=AnswerPrompts.from_file(settings.prompts_file),
        temperature=settings.reward_temperature,
        judge_temperature=settings.reward_judge_temperature,
        max_tokens=settings.reward_max_tokens,
        judge_max_tokens=settings.reward_judge_max_tokens,
        open_judge=settings.reward_open_judge,
    )


class RewardWorker:
    def __init__(
        self,
        queue: JobQueue,
        scorer: RewardScorer,
        metrics: RewardMetrics,
        *,
        max_in_flight: int,
        consumer: str | None = None,
        images: ImageStore | None = None,
    ) -> None:
        self.queue = queue
        self.images = images or ImageStore(queue, ttl_s=1)  # reads only: the front sets the TTL
        self.scorer = scorer
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-reward"

    async def run(self, stop: asyncio.Event) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        next_reclaim = 0.0
        backoff = RedisBackoff(logger)
        while not stop.is_set():
            if len(in_flight) >= self.max_in_flight:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            free = self.max_in_flight - len(in_flight)
            try:
                deliveries: list[Delivery] = []
                if time.monotonic() >= next_reclaim:
                    deliveries = await self.queue.reclaim(self.consumer, count=free)
                    next_reclaim = time.monotonic() + RECLAIM_EVERY_S
                if not deliveries:
                    deliveries = await self.queue.read(self.consumer, count=free, block_ms=READ_BLOCK_MS)
                backoff.reset()
            except redis.exceptions.RedisError as exc:  # down, or refusing writes (maxmemory): wait it out
                await backoff.pause(stop, exc)
                continue
            for delivery in deliveries:
                task = asyncio.create_task(self._guarded(delivery))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        if in_flight:  # finish what is in hand
            await asyncio.wait(in_flight)
        logger.info("reward worker %s stopped", self.consumer)

    async def _guarded(self, delivery: Delivery) -> None:
        try:
            await self.process(delivery)
        except redis.exceptions.RedisError as exc:  # down, or refusing writes (maxmemory)
            # Not acked: the entry stays pending and is reclaimed once Redis is back.
            logger.warning("query %s not stored, Redis unavailable: %s", delivery.job_id, exc)

    async def process(self, delivery: Delivery) -> None:
        try:
            query, owner, refs = read_query(delivery)
            legacy = [QueryImage.from_bytes(raw) for raw in refs if isinstance(raw, bytes)]
        except (KeyError, ValueError, ValidationError) as exc:
            await self._fail(delivery, QueryError(type="invalid_query", message=f"malformed query: {exc}"))
            return
        if not await self.queue.mark_running(delivery, self.consumer):
            await self.queue.ack(delivery)
            return
        try:
            digests = [ref for ref in refs if isinstance(ref, str)]
            images = legacy or await self.images.get(owner, digests)
        except ImagesGone as exc:
            await self._fail(delivery, QueryError(type="redis_unavailable", message=str(exc)))
            return
        started = time.perf_counter()
        try:
            result = await self.scorer.run(query, images)
        except MLLMError as exc:
            kind: QueryErrorType = (
                "mllm_not_configured"
                if isinstance(exc, MLLMNotConfigured)
                else "mllm_rejected"
                if isinstance(exc, MLLMRejected)
                else "mllm_unavailable"
            )
            self.metrics.failures.labels(kind, exc.backend or "none").inc()
            if isinstance(exc, MLLMIncomplete):  # cut at max_tokens before an answer/verdict: 502
                self.metrics.truncated.labels(query.kind, "failed").inc()
            await self._fail(delivery, QueryError(type=kind, message=str(exc)))
            return
        except ValueError as exc:  # bad ground truth the API could not see (e.g. a scorer's meta)
            await self._fail(delivery, QueryError(type="invalid_query", message=str(exc)))
            return
        self.metrics.query_seconds.labels(query.kind).observe(time.perf_counter() - started)
        self.metrics.mllm_requests.labels(query.kind).inc(result.requests)
        for cause, count in result.verdicts.items():
            self.metrics.verdict_causes.labels(query.kind, cause).inc(count)
        if result.truncated:
            self.metrics.truncated.labels(query.kind, "used").inc(result.truncated)
        # K MLLM calls went into this: ride out a Redis blip (up to the reclaim time) rather than redo them
        await self.queue.complete(
            delivery, result.model_dump_json().encode(), retry_s=self.queue.reclaim_idle_s
        )
        await self.queue.redis.delete(lock_key(self.queue, delivery.job_id))

    async def _fail(self, delivery: Delivery, error: QueryError) -> None:
        await self.queue.fail(delivery, error.model_dump_json(), retry_s=self.queue.reclaim_idle_s)
        await self.queue.redis.delete(lock_key(self.queue, delivery.job_id))


async def serve_worker(settings: RewardSettings) -> None:
    """``etchr worker reward``: one more query worker, anywhere that reaches Redis and the backends."""
    metrics = RewardMetrics()
    client = connect_redis(settings)
    queue = reward_queue(client, settings)
    scorer = build_scorer(settings)
    worker = RewardWorker(queue, scorer, metrics, max_in_flight=settings.reward_max_in_flight)
    try:
        await run_worker_process(worker, settings)
    finally:
        await scorer.mllm.close_pair(scorer.judge)
        await client.aclose()
