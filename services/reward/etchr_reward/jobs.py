"""The reward service's queue contract: its stream, how a query travels on it, its lock, its error codes.

The API (through ``dispatch``) enqueues queries under their content digest and waits; query workers
(``worker``) score them and store a ``QueryResult`` or a ``QueryError``. Both import this module and not
each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel

from etchr.queue import Delivery, JobQueue
from etchr.settings import RewardSettings
from etchr_reward.scoring import Query, QueryImage

QUEUE_NAME = "reward"

QueryErrorType = Literal[
    "mllm_unavailable", "mllm_rejected", "mllm_not_configured", "invalid_query", "redis_unavailable"
]

# The HTTP status the API answers when a query failed this way (docs/api.md).
ERROR_STATUS: dict[str, int] = {
    "mllm_unavailable": 503,
    "mllm_not_configured": 503,
    "mllm_rejected": 502,
    "invalid_query": 400,
    "redis_unavailable": 503,  # the query's images were gone from Redis (expired or evicted) when it ran
}

# Bytes of prepared images (data URLs built) a worker keeps: an original shown in all 2G + 1 queries of its
# group is read from Redis and base64-encoded once, not once per query.
WORKER_IMAGE_CACHE_BYTES = 64 * 1024 * 1024
# Bytes of images per pipeline when a request stores them. One pipeline of a whole request (~20 MB at 512²)
# cost ~6x the CPU of 4 MB ones: asyncio re-copies the unsent rest of a big write at every partial send.
IMAGE_PIPELINE_BYTES = 4 * 1024 * 1024


class QueryError(BaseModel):
    """What a failed query stores, so the API can answer with the right status and the backend's name."""

    type: QueryErrorType
    message: str


def reward_queue(client: aioredis.Redis, settings: RewardSettings) -> JobQueue:
    """The reward stream, ``{ETCHR_REDIS_PREFIX}:reward``; a DONE record doubles as the cache, so results
    live for ``ETCHR_REWARD_CACHE_TTL_S``."""
    return JobQueue.for_service(client, settings, QUEUE_NAME, result_ttl_s=settings.reward_cache_ttl_s)


def lock_key(queue: JobQueue, digest: str) -> str:
    """Held by whoever enqueued a query until a worker finishes it: identical queries wait instead."""
    return f"{queue.name}:lock:{digest}"


def image_key(queue: JobQueue, owner: str, digest: str) -> str:
    """Where a request (``owner``: a token of its own) keeps one of its images while its queries run."""
    return f"{queue.name}:image:{owner}:{digest}"


def query_fields(query: Query, owner: str, images: Sequence[QueryImage]) -> dict[str, bytes | str]:
    """The stream entry of a query: its JSON and its images by digest, stored once per request under
    ``owner`` (:class:`ImageStore`) rather than once per query in every entry."""
    return {"query": query.model_dump_json(), "owner": owner, "images": ",".join(i.digest for i in images)}


def read_query(delivery: Delivery) -> tuple[Query, str, list[str] | list[bytes]]:
    """The query, its owner and its image digests from a stream entry (an entry written before images
    travelled by digest carries the bytes themselves: image0, image1); KeyError or ValueError when malformed.
    """
    query = Query.model_validate_json(delivery.fields["query"])
    images = delivery.fields["images"]
    if isinstance(images, bytes):
        images = images.decode()
    if "owner" not in delivery.fields:  # the previous format: a count, the bytes beside it
        return query, "", [delivery.fields[f"image{i}"] for i in range(int(images))]
    owner = delivery.fields["owner"]
    owner = owner.decode() if isinstance(owner, bytes) else owner
    return query, owner, [digest for digest in images.split(",") if digest]


class ImagesGone(LookupError):
    """A query's images are no longer in Redis (kept ``ETCHR_REWARD_DEADLINE_S`` + 60 s, or evicted)."""


class ImageStore:
    """Query images in Redis by content digest: each stored once per request, read once per worker.

    The front writes a request's images (SET with a TTL, in the round trip before its enqueue) and deletes
    them once its queries are answered; the TTL only catches what a request that died or gave up leaves. A
    worker keeps recently used images, prepared (data URL built), in a small LRU cache keyed by digest, and
    joins a read already in flight for the same digest, so the original shown by every query of a group is
    fetched and encoded once.

    With ``keep_written`` (one store shared by the front and its in-process worker) what the front writes goes
    into that cache too, data URL and all, so the worker beside it does not read back from Redis the images it
    was just handed; the SETs still happen first, for other workers and for a reclaim after a crash.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        ttl_s: int,
        cache_bytes: int = WORKER_IMAGE_CACHE_BYTES,
        keep_written: bool = False,
    ) -> None:
        self.queue = queue
        self.ttl_s = max(1, ttl_s)
        self.cache_bytes = cache_bytes
        self.keep_written = keep_written
        self._cache: OrderedDict[str, QueryImage] = OrderedDict()
        self._cached_bytes = 0
        self._reading: dict[str, asyncio.Future[QueryImage | None]] = {}

    @classmethod
    def for_deadline(cls, queue: JobQueue, deadline_s: float, *, keep_written: bool = False) -> ImageStore:
        """The front's store: a request's images outlive its deadline (ETCHR_REWARD_DEADLINE_S) by 60 s."""
        return cls(queue, ttl_s=int(deadline_s) + 60, keep_written=keep_written)

    def put(self, pipe: aioredis.client.Pipeline, owner: str, images: Iterable[QueryImage]) -> list[str]:
        """Queue the SETs of ``images`` (each digest once) on ``pipe``; their keys, for :meth:`drop`."""
        keys = []
        for image in {image.digest: image for image in images}.values():
            key = image_key(self.queue, owner, image.digest)
            pipe.set(key, image.data, ex=self.ttl_s)
            keys.append(key)
            if self.keep_written:
                self._remember(image)
        return keys

    async def write(self, owner: str, images: Iterable[QueryImage]) -> list[str]:
        """Store ``images`` (each digest once) in pipelines of about ``IMAGE_PIPELINE_BYTES``; their keys.

        On a Redis error what was already stored is deleted (best effort; the TTL catches the rest).
        """
        keys: list[str] = []
        pending = list({image.digest: image for image in images}.values())
        try:
            while pending:
                size, batch = 0, []
                while pending and (not batch or size + len(pending[0].data) <= IMAGE_PIPELINE_BYTES):
                    image = pending.pop(0)
                    batch.append(image)
                    size += len(image.data)
                async with self.queue.redis.pipeline(transaction=False) as pipe:
                    written = self.put(pipe, owner, batch)
                    await pipe.execute()
                keys.extend(written)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.drop(keys)
            raise
        return keys

    async def drop(self, keys: Sequence[str]) -> None:
        if keys:
            await self.queue.redis.delete(*keys)

    async def get(self, owner: str, digests: Sequence[str]) -> list[QueryImage]:
        """The images of one query, from the cache, a read in flight, or one MGET; ImagesGone if missing."""
        found: dict[str, QueryImage | None] = {}
        joined: dict[str, asyncio.Future[QueryImage | None]] = {}
        missing: list[str] = []
        for digest in dict.fromkeys(digests):
            if (image := self._cache.get(digest)) is not None:
                self._cache.move_to_end(digest)
                found[digest] = image
            elif digest in self._reading:
                joined[digest] = self._reading[digest]
            else:
                missing.append(digest)
        if missing:
            loop = asyncio.get_running_loop()
            futures = {digest: loop.create_future() for digest in missing}
            self._reading.update(futures)
            try:
                values = await self.queue.redis.mget([image_key(self.queue, owner, d) for d in missing])
            except BaseException as exc:
                for future in futures.values():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                        future.exception()  # marked retrieved: only joiners re-raise it
                raise
            finally:
                for digest in missing:
                    self._reading.pop(digest, None)
            for digest, raw in zip(missing, values, strict=True):
                image = QueryImage.from_bytes(raw) if raw is not None else None
                if image is not None:
                    self._remember(image)
                found[digest] = image
                futures[digest].set_result(image)
        for digest, future in joined.items():
            found[digest] = await asyncio.shield(future)
        gone = [digest for digest, image in found.items() if image is None]
        if gone:
            raise ImagesGone(
                f"image {gone[0][:12]} of this query is no longer in Redis (kept ETCHR_REWARD_DEADLINE_S "
                "+ 60 s, or evicted under maxmemory); retry the request"
            )
        return [found[digest] for digest in digests]  # type: ignore[misc]

    def _remember(self, image: QueryImage) -> None:
        if image.digest in self._cache or len(image.data) > self.cache_bytes:
            return
        self._cache[image.digest] = image
        self._cached_bytes += len(image.data)
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old.data)
