"""Resolve a request's queries: cache hits, joining identical queries in flight, enqueueing the rest.

Every query is a job whose id is its content digest, so the job record doubles as the cache (a DONE record
kept for ``ETCHR_REWARD_CACHE_TTL_S``) and as the rendezvous for identical queries: whoever takes the
digest's lock enqueues it, everyone else waits for the same record.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis import exceptions as redis_exceptions

from etchr.http import NO_RETRY_HEADERS, ServiceError
from etchr.protocol.reward import RewardUsage
from etchr.queue import JobQueue, JobRecord, JobStatus
from etchr_reward.jobs import ERROR_STATUS, ImageStore, QueryError, lock_key, query_fields
from etchr_reward.metrics import RewardMetrics
from etchr_reward.scoring import Query, QueryImage, QueryResult

logger = logging.getLogger("etchr.reward.dispatch")


@dataclass(frozen=True)
class PendingQuery:
    digest: str
    query: Query
    images: tuple[QueryImage, ...]


@dataclass
class Resolution:
    results: dict[str, QueryResult]
    usage: RewardUsage = field(default_factory=lambda: RewardUsage(mllm_requests=0, cache_hits=0))


class QueryDispatcher:
    def __init__(
        self, queue: JobQueue, metrics: RewardMetrics, *, deadline_s: float, images: ImageStore | None = None
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.deadline_s = deadline_s
        self.images = images or ImageStore.for_deadline(queue, deadline_s)

    async def resolve(self, queries: Sequence[PendingQuery]) -> Resolution:
        """Every query's result, or a ServiceError (503/502/504) — never a partial or invented score."""
        unique = {query.digest: query for query in queries}
        deadline = time.monotonic() + self.deadline_s
        redis = self.queue.redis
        resolution = Resolution(results={})
        usage = resolution.usage
        usage.queries = len(unique)

        async with redis.pipeline(transaction=False) as pipe:
            for digest in unique:
                pipe.hget(self.queue.record_key(digest), "status")
            statuses = await pipe.execute()
        # Take the lock of every query not cached or in flight; whoever holds it enqueues, the rest join.
        candidates = [
            digest
            for digest, status in zip(unique, statuses, strict=True)
            if status in (None, JobStatus.FAILED.value.encode())
        ]
        async with redis.pipeline(transaction=False) as pipe:
            for digest in candidates:
                pipe.set(lock_key(self.queue, digest), b"1", nx=True, ex=max(1, int(self.deadline_s)))
            replies = await pipe.execute(raise_on_error=False)
        locked = {digest for digest, ok in zip(candidates, replies, strict=True) if ok is True}
        refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if refused is not None:
            await self._release(locked)
            raise refused
        jobs = []
        owner = secrets.token_hex(8)  # this request's images: stored once, however many queries show them
        shown: list[QueryImage] = []
        for (digest, pending), status in zip(unique.items(), statuses, strict=True):
            if status == JobStatus.DONE.value.encode():
                source = "cache"
                usage.cache_hits += 1
            elif digest in locked:
                source = "computed"
                fields = query_fields(pending.query, owner, pending.images)
                jobs.append((digest, fields, {"kind": pending.query.kind}))
                shown.extend(pending.images)
            else:  # an identical query is queued or running: join it
                source = "coalesced"
                usage.coalesced += 1
            self.metrics.queries.labels(pending.query.kind, source).inc()
        image_keys: list[str] = []
        try:
            if shown:  # before the entries that name them, so a worker never reads an entry ahead of them
                image_keys = await self.images.write(owner, shown)
            await self.queue.enqueue_many(jobs)
        except redis_exceptions.RedisError:
            await self._release(locked)
            await self._drop_images(image_keys)
            raise
        computed = locked
        waiting = set(unique)

        records = await self.queue.wait_many(waiting, max(0.0, deadline - time.monotonic()))
        missing = waiting - records.keys()
        if not missing:  # every query of ours is answered: its images are needed no more (else: the TTL)
            await self._drop_images(image_keys)
        if missing:
            raise ServiceError(
                504,
                "deadline_exceeded",
                f"{len(missing)} of {len(unique)} MLLM queries did not finish within {self.deadline_s:g} s "
                "(ETCHR_REWARD_DEADLINE_S); are reward workers running and the backends keeping up?",
            )
        for digest, record in records.items():
            resolution.results[digest] = self._result(record)
            if digest in computed:
                usage.mllm_requests += resolution.results[digest].requests
        return resolution

    async def _release(self, locked: set[str]) -> None:
        """Drop the locks of queries this request took but could not enqueue (Redis refused or went away).

        Left in place, a retry of the same request would join those never-queued queries and wait for them
        until ``ETCHR_REWARD_DEADLINE_S`` (504). A DEL is allowed even at maxmemory; if Redis is gone, the
        locks expire with the deadline anyway.
        """
        if not locked:
            return
        try:
            await self.queue.redis.delete(*(lock_key(self.queue, digest) for digest in locked))
        except redis_exceptions.RedisError as exc:
            logger.warning("could not release %d query locks: %s", len(locked), exc)

    async def _drop_images(self, keys: list[str]) -> None:
        try:
            await self.images.drop(keys)
        except redis_exceptions.RedisError as exc:  # they expire with their TTL anyway
            logger.warning("could not delete %d query images: %s", len(keys), exc)

    @staticmethod
    def _result(record: JobRecord) -> QueryResult:
        if record.status is JobStatus.FAILED:
            try:
                error = QueryError.model_validate_json(record.error or "")
            except ValueError:
                error = QueryError(type="mllm_unavailable", message=record.error or "query failed")
            status = ERROR_STATUS.get(error.type, 503)
            # Retry-After only where a retry can help: not on a 4xx, not when no MLLM is configured (a
            # deployment fix; the client would only wait and fail the same way).
            retry = status == 503 and error.type != "mllm_not_configured"
            headers = {"Retry-After": "5"} if retry else (dict(NO_RETRY_HEADERS) if status >= 500 else None)
            raise ServiceError(status, error.type, error.message, headers=headers)
        assert record.result is not None
        return QueryResult.model_validate_json(record.result)
