"""``JobQueue.enqueue(..., max_depth=)`` on a real redis-server: the bound is atomic and leaves no trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.exceptions
from redis.asyncio import Redis

from etchr.queue import JobQueue, JobStatus, QueueDepth, QueueFull
from tests.support.redis_memory import fill_until_oom, lift_maxmemory
from tests.support.redis_server import RedisServer


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def queue(redis_url: str, key_prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[JobQueue]:
    client = Redis.from_url(redis_url, protocol=request.param)
    q = JobQueue(client, f"{key_prefix}:q", reclaim_idle_s=1)
    await q.ensure_group()
    yield q
    await client.aclose()


async def test_bounded_enqueue_writes_what_enqueue_writes(queue: JobQueue) -> None:
    payload = bytes(range(256))
    await queue.enqueue("a", {"image": payload, "question": "where?"}, meta={"task": "logic"}, max_depth=5)

    record = await queue.get("a")
    assert record is not None and record.status is JobStatus.QUEUED
    assert record.meta == {"task": "logic"} and record.created_ms > 0
    assert 0 < await queue.redis.ttl(queue.record_key("a")) <= queue.record_ttl_s
    [delivery] = await queue.read("w1", count=1, block_ms=None)
    assert delivery.job_id == "a"
    assert delivery.fields == {"image": payload, "question": b"where?"}


async def test_the_bound_counts_running_jobs_and_frees_up_when_they_finish(queue: JobQueue) -> None:
    await queue.enqueue("a", {"x": b"1"}, max_depth=2)
    await queue.enqueue("b", {"x": b"2"}, max_depth=2)
    [running] = await queue.read("w1", count=1, block_ms=None)
    assert await queue.depth() == QueueDepth(waiting=1, running=1)

    with pytest.raises(QueueFull) as refused:
        await queue.enqueue("c", {"x": b"3"}, max_depth=2)
    assert (refused.value.depth, refused.value.limit) == (2, 2)
    assert await queue.get("c") is None

    await queue.complete(running, b"done")
    await queue.enqueue("c", {"x": b"3"}, max_depth=2)
    assert await queue.depth() == QueueDepth(waiting=2, running=0)


async def test_concurrent_bounded_enqueues_admit_exactly_the_bound(queue: JobQueue) -> None:
    async def attempt(i: int) -> bool:
        try:
            await queue.enqueue(f"job{i}", {"x": str(i)}, max_depth=7)
        except QueueFull:
            return False
        return True

    admitted = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert sum(admitted) == 7
    assert await queue.redis.xlen(queue.stream) == 7


async def test_at_maxmemory_a_bounded_enqueue_is_refused_whole(key_prefix: str) -> None:
    """The script's first write is the XADD, which Redis refuses at maxmemory: no record, no entry."""
    server = RedisServer().start()
    client = Redis.from_url(server.url)
    try:
        queue = JobQueue(client, f"{key_prefix}:q", reclaim_idle_s=1)
        await queue.ensure_group()
        await client.set(queue.done_key("a"), b"stale")  # would be deleted by an enqueue that got through
        fill_until_oom(server)

        with pytest.raises(redis.exceptions.OutOfMemoryError):
            await queue.enqueue("a", {"x": b"1"}, max_depth=5)
        assert await client.xlen(queue.stream) == 0
        assert await client.get(queue.done_key("a")) == b"stale"
        assert await queue.get("a") is None

        lift_maxmemory(server)
        await queue.enqueue("a", {"x": b"1"}, max_depth=5)
        assert await client.xlen(queue.stream) == 1
    finally:
        await client.aclose()
        server.stop()
