"""JobQueue against a real redis-server: delivery, reclaim, dead-lettering, completion and waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.exceptions
from redis.asyncio import Redis

from etchr.queue import Delivery, JobQueue, JobStatus, QueueDepth
from tests.support.redis_server import RedisServer

IDLE_S = 0.25


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def redis_client(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """Both wire protocols: redis-py shapes some stream replies differently under RESP3."""
    client = Redis.from_url(redis_url, protocol=request.param)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(redis_client: Redis, key_prefix: str) -> JobQueue:
    q = JobQueue(redis_client, f"{key_prefix}:q", reclaim_idle_s=IDLE_S, max_deliveries=3)
    await q.ensure_group()
    return q


OwnRedis = tuple[RedisServer, Redis, JobQueue]


@pytest.fixture
async def own_redis(key_prefix: str) -> AsyncIterator[OwnRedis]:
    """A queue on a redis-server of this test's own, which the test may stop and start again."""
    server = RedisServer().start()
    client = Redis.from_url(server.url)
    queue = JobQueue(client, f"{key_prefix}:q", reclaim_idle_s=IDLE_S)
    await queue.ensure_group()
    yield server, client, queue
    await client.aclose()
    server.stop()


async def read_one(queue: JobQueue, consumer: str = "w1") -> Delivery:
    [delivery] = await queue.read(consumer, count=1, block_ms=None)
    return delivery


async def test_roundtrip_binary_payload_depth_and_cleanup(queue: JobQueue, redis_client: Redis) -> None:
    payload = bytes(range(256))
    await queue.enqueue("a", {"image": payload, "question": "where?"}, meta={"task": "logic", "n": "2"})
    await queue.enqueue("b", {"image": b"x"})
    assert await queue.depth() == QueueDepth(waiting=2, running=0)

    record = await queue.get("a")
    assert record is not None
    assert record.status is JobStatus.QUEUED
    assert record.meta == {"task": "logic", "n": "2"}
    assert record.created_ms > 0 and record.started_ms is None and record.result is None

    delivery = await read_one(queue)
    assert delivery.job_id == "a"
    assert delivery.fields == {"image": payload, "question": b"where?"}
    assert delivery.deliveries == 1
    depth = await queue.depth()
    assert depth == QueueDepth(waiting=1, running=1) and depth.total == 2

    assert await queue.mark_running(delivery, "w1") is True
    record = await queue.get("a")
    assert record is not None and record.status is JobStatus.RUNNING
    assert record.consumer == "w1" and record.started_ms is not None

    result = b"\x89PNG\x00\xff" * 10
    await queue.complete(delivery, result)
    record = await queue.wait("a", timeout_s=1)
    assert record is not None
    assert record.status is JobStatus.DONE and record.result == result and record.error is None
    assert record.finished_ms is not None and record.finished_ms >= record.started_ms >= record.created_ms
    assert record.meta == {"task": "logic", "n": "2"}
    assert await queue.depth() == QueueDepth(waiting=1, running=0)

    other = await read_one(queue, "w2")
    await queue.complete(other, b"ok")
    assert await redis_client.xlen(queue.stream) == 0
    assert await queue.depth() == QueueDepth(waiting=0, running=0)
    assert await queue.get("missing") is None


async def test_read_returns_at_most_count_and_blocks_briefly(queue: JobQueue) -> None:
    for i in range(5):
        await queue.enqueue(f"j{i}", {"i": str(i)})
    first = await queue.read("w1", count=3, block_ms=None)
    assert [d.job_id for d in first] == ["j0", "j1", "j2"]
    rest = await queue.read("w2", count=10, block_ms=50)
    assert [d.job_id for d in rest] == ["j3", "j4"]
    assert await queue.read("w1", count=10, block_ms=None) == []

    started = time.monotonic()
    assert await queue.read("w1", count=10, block_ms=150) == []
    assert 0.1 <= time.monotonic() - started < 1.0
    assert await queue.depth() == QueueDepth(waiting=0, running=5)


async def test_blocking_read_wakes_on_enqueue(queue: JobQueue) -> None:
    reader = asyncio.create_task(queue.read("w1", count=4, block_ms=2000))
    await asyncio.sleep(0.1)
    await queue.enqueue("late", {"x": b"1"})
    deliveries = await asyncio.wait_for(reader, 1)
    assert [d.job_id for d in deliveries] == ["late"]


async def test_reclaim_after_idle_counts_deliveries(queue: JobQueue) -> None:
    await queue.enqueue("j", {"x": b"1"})
    first = await read_one(queue, "dead-worker")  # read, never acked: the worker "died"
    assert await queue.reclaim("w2") == []  # not idle long enough yet

    await asyncio.sleep(IDLE_S + 0.05)
    [second] = await queue.reclaim("w2")
    assert (second.entry_id, second.job_id, second.fields) == (first.entry_id, "j", {"x": b"1"})
    assert second.deliveries == 2
    assert await queue.reclaim("w3") == []  # w2 holds it now, freshly
    assert await queue.depth() == QueueDepth(waiting=0, running=1)

    await asyncio.sleep(IDLE_S + 0.05)
    [third] = await queue.reclaim("w3")
    assert third.deliveries == 3
    await queue.complete(third, b"done")
    record = await queue.get("j")
    assert record is not None and record.status is JobStatus.DONE
    assert await queue.depth() == QueueDepth(waiting=0, running=0)


async def test_dead_letter_after_max_deliveries(redis_client: Redis, key_prefix: str) -> None:
    queue = JobQueue(redis_client, f"{key_prefix}:q", reclaim_idle_s=0.2, max_deliveries=2)
    await queue.ensure_group()
    await queue.enqueue("poison", {"image": b"\x00boom"})
    await queue.enqueue("fine", {"image": b"ok"})
    assert (await read_one(queue, "w1")).deliveries == 1
    await asyncio.sleep(0.25)
    [again] = await queue.reclaim("w2")
    assert (again.job_id, again.deliveries) == ("poison", 2)

    waiter = asyncio.create_task(queue.wait("poison", timeout_s=3))
    await asyncio.sleep(0.25)
    assert await queue.reclaim("w3") == []  # third delivery > max_deliveries: dead-lettered, not returned

    record = await asyncio.wait_for(waiter, 1)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and "3 times" in record.error and "max 2" in record.error
    [(_, entry)] = await redis_client.xrange(queue.dead_stream)
    assert entry[b"job_id"] == b"poison"
    assert entry[b"deliveries"] == b"3"
    assert b"3 times" in entry[b"reason"]
    assert entry[b"field:image"] == b"\x00boom"

    assert await queue.depth() == QueueDepth(waiting=1, running=0)  # only "fine" remains
    await asyncio.sleep(0.25)
    assert await queue.reclaim("w4") == []
    assert [d.job_id for d in await queue.read("w4", count=10, block_ms=None)] == ["fine"]


async def test_redelivery_of_finished_job_is_harmless(queue: JobQueue, redis_client: Redis) -> None:
    await queue.enqueue("j", {"x": b"1"})
    slow = await read_one(queue, "slow")
    assert await queue.mark_running(slow, "slow")
    await asyncio.sleep(IDLE_S + 0.05)
    [stolen] = await queue.reclaim("w2")  # "slow" looks dead, but is not

    await queue.complete(slow, b"first")
    assert await queue.mark_running(stolen, "w2") is False
    await queue.ack(stolen)
    await queue.complete(stolen, b"second")  # idempotent: the first result stands, no second notification
    await queue.fail(stolen, "late failure")

    record = await queue.get("j")
    assert record is not None
    assert (record.status, record.result, record.error, record.consumer) == (
        JobStatus.DONE,
        b"first",
        None,
        "slow",
    )
    assert await redis_client.llen(queue.done_key("j")) == 1
    assert await queue.depth() == QueueDepth(waiting=0, running=0)


async def test_crash_between_store_and_ack(queue: JobQueue, redis_client: Redis) -> None:
    """The result is stored but the entry is still pending: the re-delivery is recognised and just acked."""
    await queue.enqueue("j", {"x": b"1"})
    delivery = await read_one(queue, "crashed")
    await redis_client.hset(queue.record_key("j"), mapping={"status": "done", "result": b"kept"})
    await asyncio.sleep(IDLE_S + 0.05)
    [redelivered] = await queue.reclaim("w2")
    assert redelivered.entry_id == delivery.entry_id
    assert await queue.mark_running(redelivered, "w2") is False
    await queue.ack(redelivered)
    record = await queue.get("j")
    assert record is not None and (record.status, record.result) == (JobStatus.DONE, b"kept")
    assert await redis_client.xlen(queue.stream) == 0
    assert await queue.depth() == QueueDepth(waiting=0, running=0)


async def test_fail_path(queue: JobQueue, redis_client: Redis) -> None:
    await queue.enqueue("j", {"x": b"1"})
    delivery = await read_one(queue)
    assert await queue.mark_running(delivery, "w1")
    await queue.fail(delivery, "CUDA out of memory")
    record = await queue.wait("j", timeout_s=1)
    assert record is not None
    assert (record.status, record.error, record.result) == (JobStatus.FAILED, "CUDA out of memory", None)
    assert record.finished_ms is not None
    await queue.complete(delivery, b"too late")  # the first terminal state sticks
    record = await queue.get("j")
    assert record is not None and record.status is JobStatus.FAILED and record.result is None
    assert await redis_client.xlen(queue.stream) == 0


async def test_wait_times_out_with_none(queue: JobQueue) -> None:
    await queue.enqueue("j", {"x": b"1"})
    started = time.monotonic()
    assert await queue.wait("j", timeout_s=0.3) is None
    assert 0.28 <= time.monotonic() - started < 2.0
    assert await queue.wait("unknown", timeout_s=0.05) is None


async def test_wait_wakes_promptly_and_serves_several_waiters(queue: JobQueue) -> None:
    await queue.enqueue("j", {"x": b"1"})
    waiters = [asyncio.create_task(queue.wait("j", timeout_s=5)) for _ in range(3)]
    await asyncio.sleep(0.3)  # all of them are blocked in BLPOP by now
    delivery = await read_one(queue)
    completed_at = time.monotonic()
    await queue.complete(delivery, b"result")
    records = await asyncio.wait_for(asyncio.gather(*waiters), 2)
    # woken by the notification, not by the 1 s re-check of the record
    assert time.monotonic() - completed_at < 0.8
    assert all(r is not None and r.result == b"result" for r in records)


async def test_ttls(redis_client: Redis, key_prefix: str) -> None:
    queue = JobQueue(redis_client, f"{key_prefix}:q", reclaim_idle_s=1, result_ttl_s=100, record_ttl_s=500)
    await queue.ensure_group()
    await queue.enqueue("j", {"x": b"1"})
    assert 400 < await redis_client.ttl(queue.record_key("j")) <= 500
    delivery = await read_one(queue)
    await queue.mark_running(delivery, "w1")
    assert 400 < await redis_client.ttl(queue.record_key("j")) <= 500
    await queue.complete(delivery, b"r")
    assert 0 < await redis_client.ttl(queue.record_key("j")) <= 100
    assert 0 < await redis_client.ttl(queue.done_key("j")) <= 100


async def test_depth_and_read_without_group(redis_client: Redis, key_prefix: str) -> None:
    queue = JobQueue(redis_client, f"{key_prefix}:q", reclaim_idle_s=1)
    assert await queue.depth() == QueueDepth(waiting=0, running=0)
    other = JobQueue(redis_client, f"{key_prefix}:q2", reclaim_idle_s=1)
    await other.enqueue("early", {"x": b"1"})  # XADD creates the stream, no group yet
    assert [d.job_id for d in await other.read("w1", count=5, block_ms=None)] == ["early"]


def test_rejects_decoding_client_and_reserved_field(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        JobQueue(Redis.from_url(redis_url, decode_responses=True), "x", reclaim_idle_s=1)


async def test_reserved_field(queue: JobQueue) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await queue.enqueue("j", {"job_id": b"x"})


async def test_redis_restart_recreates_group_and_errors_propagate(own_redis: OwnRedis) -> None:
    server, _, queue = own_redis
    await queue.enqueue("before", {"x": b"1"})

    server.stop()  # no persistence: the stream, group and records are gone
    for call in (
        queue.read("w1", count=1, block_ms=None),
        queue.enqueue("down", {"x": b"1"}),
        queue.depth(),
        queue.wait("before", timeout_s=1),
        queue.reclaim("w1"),
    ):
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(call, 10)

    server.start()
    await queue.enqueue("after", {"x": b"2"})  # XADD recreates the stream, without a group
    [delivery] = await queue.read("w1", count=5, block_ms=None)
    assert delivery.job_id == "after"
    await queue.complete(delivery, b"ok")
    record = await queue.get("after")
    assert record is not None and record.result == b"ok"
    assert await queue.get("before") is None


async def test_complete_rides_out_a_redis_blip_within_retry_s(own_redis: OwnRedis) -> None:
    """A computed result is stored once Redis is back (within ``retry_s``), not lost to a reclaim."""
    server, client, queue = own_redis
    for job in ("kept", "given-up"):
        await queue.enqueue(job, {"x": b"1"})
    kept, given_up = await queue.read("w1", count=2, block_ms=None)
    await client.save()  # the restart below reloads this snapshot: a blip, not a data loss
    server.stop()

    with pytest.raises(redis.exceptions.ConnectionError):
        await queue.complete(kept, b"lost")  # the default: no retry, the caller decides
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        await queue.complete(given_up, b"late", retry_s=0.6)
    assert 0.5 <= time.monotonic() - started < 5  # it did retry, and gave up at the deadline

    storing = asyncio.create_task(queue.complete(kept, b"computed", retry_s=30))
    await asyncio.sleep(1.0)
    assert not storing.done()  # still trying while Redis is down
    server.start()
    await asyncio.wait_for(storing, 10)

    record = await queue.get("kept")
    assert record is not None and record.status is JobStatus.DONE and record.result == b"computed"
    pending = await client.xpending(queue.stream, queue.group)
    assert pending["pending"] == 1  # only the job given up on stays pending, for reclaim
    [reclaimed] = await asyncio.wait_for(_reclaim_soon(queue), 5)
    assert reclaimed.job_id == "given-up"


async def _reclaim_soon(queue: JobQueue) -> list[Delivery]:
    while not (found := await queue.reclaim("w2")):
        await asyncio.sleep(0.05)
    return found


async def test_wait_many_returns_finished_jobs_and_omits_the_rest(redis_url: str, key_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    queue = JobQueue(client, key_prefix, reclaim_idle_s=5)
    try:
        await queue.ensure_group()
        for job_id in ("a", "b", "c"):
            await queue.enqueue(job_id, {"x": "1"})
        deliveries = {d.job_id: d for d in await queue.read("w", count=3, block_ms=None)}
        await queue.complete(deliveries["a"], b"A")  # finished before anyone waits

        async def finish_later() -> None:
            await asyncio.sleep(0.2)
            await queue.fail(deliveries["b"], "boom")

        started = time.monotonic()
        later = asyncio.create_task(finish_later())
        records = await queue.wait_many(["a", "b", "c"], timeout_s=1.5)
        await later
        assert set(records) == {"a", "b"}  # c never finished
        assert records["a"].result == b"A" and records["b"].error == "boom"
        assert 1.4 < time.monotonic() - started < 3

        quick = time.monotonic()
        assert set(await queue.wait_many(["a", "b"], timeout_s=5)) == {"a", "b"}
        assert time.monotonic() - quick < 0.5
        # every notification was put back exactly once: waiting never multiplies them
        assert [await client.llen(queue.done_key(job_id)) for job_id in ("a", "b")] == [1, 1]
    finally:
        await client.aclose()


async def test_keep_alive_holds_off_reclaim_while_the_worker_lives(queue: JobQueue) -> None:
    """A batch that runs longer than the reclaim time is not taken from a live worker that keeps it alive;
    once it stops (dies), the entry is reclaimed, its delivery count unchanged by the heartbeats."""
    await queue.enqueue("j", {"x": b"1"})
    held = await read_one(queue, "busy-worker")
    for _ in range(4):  # 4 × IDLE_S/2 = twice the reclaim time in all
        await asyncio.sleep(IDLE_S / 2)
        await queue.keep_alive("busy-worker", [held])
        assert await queue.reclaim("w2") == []
    await asyncio.sleep(IDLE_S + 0.05)
    [taken] = await queue.reclaim("w2")
    assert (taken.job_id, taken.deliveries) == ("j", 2)
    await queue.complete(taken, b"done")
    await queue.keep_alive("busy-worker", [held])  # a late heartbeat for a finished entry is harmless
    assert await queue.depth() == QueueDepth(waiting=0, running=0)
