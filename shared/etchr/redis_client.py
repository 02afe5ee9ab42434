"""The one way every service and worker connects to Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from etchr.settings import CommonSettings


def connect_redis(settings: CommonSettings) -> aioredis.Redis:
    """A client whose pool WAITS for a free connection instead of failing.

    redis-py's default pool raises "Too many connections" at 100, which a reward worker with hundreds of
    queries in flight reaches at once; a blocking pool queues them (``ETCHR_REDIS_MAX_CONNECTIONS``) and
    only fails after waiting 10 s. Binary responses: queue payloads are images.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=10,
        socket_connect_timeout=2,
        socket_timeout=10,
    )
    return aioredis.Redis(connection_pool=pool)
