"""The reward service's queue contract: its stream, how a query travels on it, its lock, its error codes.

The API (through ``dispatch``) enqueues queries under their content digest and waits; query workers
(``worker``) score them and store a ``QueryResult`` or a ``QueryError``. Both import this module and not
each other.
"""

from __future__ import annotations

from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel

from etchr.queue import Delivery, JobQueue
from etchr.settings import RewardSettings
from etchr_reward.scoring import Query

QUEUE_NAME = "reward"

QueryErrorType = Literal["mllm_unavailable", "mllm_rejected", "mllm_not_configured", "invalid_query"]

# The HTTP status the API answers when a query failed this way (docs/api.md).
ERROR_STATUS: dict[str, int] = {
    "mllm_unavailable": 503,
    "mllm_not_configured": 503,
    "mllm_rejected": 502,
    "invalid_query": 400,
}


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


def query_fields(query: Query, images: tuple[bytes, ...]) -> dict[str, bytes | str]:
    """The stream entry of a query: its JSON, and each image's encoded bytes as a binary field."""
    fields: dict[str, bytes | str] = {"query": query.model_dump_json(), "images": str(len(images))}
    fields.update({f"image{i}": raw for i, raw in enumerate(images)})
    return fields


def read_query(delivery: Delivery) -> tuple[Query, list[bytes]]:
    """The query and its images from a stream entry; KeyError or ValueError when it is malformed."""
    query = Query.model_validate_json(delivery.fields["query"])
    images = [delivery.fields[f"image{i}"] for i in range(int(delivery.fields["images"]))]
    return query, images
