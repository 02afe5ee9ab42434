"""The one way every service and worker connects to Redis."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import redis.asyncio as aioredis

from etchr.settings import CommonSettings

try:  # redis-py >= 7
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # older redis-py has no maintenance notifications, and checks connections on checkout
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]


def connect_redis(settings: CommonSettings) -> aioredis.Redis:
    """A client whose pool WAITS for a free connection instead of failing.

    redis-py's default pool raises "Too many connections" at 100, which a reward worker with hundreds of
    queries in flight reaches at once; a blocking pool queues them (``ETCHR_REDIS_MAX_CONNECTIONS``) and
    only fails after waiting 10 s. Binary responses: queue payloads are images.

    Maintenance notifications are switched off: while they are on ("auto" by default in redis-py 8) the
    pool skips its check of a connection when handing it out, so after a Redis restart every pooled
    connection fails its next pipeline (pipelines are not retried) although readiness already says 200.
    """
    extra: dict[str, object] = {}
    if MaintNotificationsConfig is not None:
        extra["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=10,
        socket_connect_timeout=2,
        socket_timeout=10,
        **extra,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisBackoff:
    """How a worker loop waits out a Redis outage: 0.5 s doubling to 5 s, cut short by ``stop``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.delay = 0.5

    def reset(self) -> None:
        self.delay = 0.5

    async def pause(self, stop: asyncio.Event, error: Exception) -> None:
        self.logger.warning("redis unavailable (%s); retrying in %.1f s", error, self.delay)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self.delay)
        self.delay = min(self.delay * 2, 5.0)
