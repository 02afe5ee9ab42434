"""At-least-once job queue on Redis Streams with a consumer group.

Producers ``enqueue`` a job (a record hash plus a stream entry); workers ``read`` batches, ``mark_running``,
then ``complete``/``fail``; entries a dead worker held are re-delivered by ``reclaim`` after
``reclaim_idle_s`` and dead-lettered after ``max_deliveries``. Every entry carries its job id and the
record holds the job's status, so a re-delivered job that already finished is recognised and just acked:
re-processing is harmless. Keys, for ``name``: ``{name}:jobs`` (stream), ``{name}:dead`` (dead letters),
``{name}:job:{id}`` (record hash), ``{name}:done:{id}`` (completion notification list); for live progress,
``{name}:seq`` / ``{name}:taken`` (admission and hand-out counters: the queue position),
``{name}:progress:{id}`` (step/steps a worker publishes) and ``{name}:waiters:{id}`` (who follows a job).

Redis errors propagate unchanged (the HTTP layer maps every one of them to 503), except that storing a
result may be asked to ride out a short outage first (``complete``/``fail`` with ``retry_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from etchr.settings import CommonSettings

T = TypeVar("T")
logger = logging.getLogger(__name__)

JOB_ID_FIELD = "job_id"  # stream entry field carrying the job id; not part of Delivery.fields
DEAD_FIELD_PREFIX = "field:"  # payload fields in a dead-letter entry, kept apart from its own fields

# Terminal states win: the first complete/fail/dead-letter sticks, later ones only ack. Storing and
# notifying happen before XACK + XDEL, in one atomic script, so an entry never leaves the pending list
# before its result is safe.
_FINISH_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
local stored = 0
if status ~= 'done' and status ~= 'failed' then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_ms', ARGV[2], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  stored = 1
end
redis.pcall('XACK', KEYS[3], ARGV[6], ARGV[7])
redis.call('XDEL', KEYS[3], ARGV[7])
return stored
"""

# A finished job is never moved back to running (a re-delivery after a crash between storing and acking);
# a cancelled one is "failed", so a worker skips it. The hand-out counter KEYS[2] becomes the job's
# admission number when that is higher: jobs admitted after it and not yet handed out are still waiting.
_MARK_RUNNING_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', ARGV[1], 'consumer', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '')
if seq and seq > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], seq) end
return 1
"""

# Cancel unless someone else still follows the job. ARGV[1] is the canceller's own waiter token ('' for an
# unconditional cancel): it is dropped first, then any live token (score = expiry ms) keeps the job going.
# A queued or running job becomes "failed" with cancelled=1 and its waiters are notified; the worker then
# skips it (mark_running) or drops its result (the finish script keeps the first terminal state).
_CANCEL_LUA = """
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
  if redis.call('ZCARD', KEYS[3]) > 0 then return 'watched' end
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if status == 'done' or status == 'failed' then return status end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_ms', ARGV[2], 'error', ARGV[3], 'cancelled', '1')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('RPUSH', KEYS[2], 'failed')
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 'cancelled'
"""


# Admission under a bound: the depth check and the enqueue in one step, so concurrent producers cannot all
# pass the check before any of them enqueues. XLEN is waiting + running (finished entries are XDEL'd). XADD is
# the first write on purpose: Redis checks maxmemory in a script without flags only until its first write,
# so at maxmemory the XADD is refused and nothing is left behind (a DEL first would let every write through).
_ENQUEUE_BOUNDED_LUA = """
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then return {0, depth} end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('DEL', KEYS[2], KEYS[3])
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[2], 'status', 'queued', 'created_ms', ARGV[2], 'meta', ARGV[3], 'seq', seq)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, depth + 1}
"""


def _stream_entry(job_id: str, fields: Mapping[str, bytes | str]) -> dict[str, bytes | str]:
    """The stream entry of a job: its payload fields plus the job id, whose field name is reserved."""
    if JOB_ID_FIELD in fields:
        raise ValueError(f"payload field name {JOB_ID_FIELD!r} is reserved")
    return {JOB_ID_FIELD: job_id, **fields}


class QueueFull(Exception):
    """The queue already held ``limit`` jobs; nothing was enqueued."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"the queue holds {depth} jobs (limit {limit})")
        self.depth = depth
        self.limit = limit


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINISHED = frozenset({JobStatus.DONE, JobStatus.FAILED})


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a consumer."""

    entry_id: str
    job_id: str
    fields: dict[str, bytes]  # the payload fields as enqueued (binary-safe)
    deliveries: int  # how many times it has been delivered (1 on first read)


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: JobStatus
    result: bytes | None
    error: str | None
    created_ms: int
    started_ms: int | None
    finished_ms: int | None
    consumer: str | None
    meta: dict[str, str] = field(default_factory=dict)
    seq: int | None = None  # admission number (bounded enqueue only): the queue position's reference
    cancelled: bool = False


@dataclass(frozen=True)
class JobProgress:
    """A job's record with what is known of its progress, read in one round trip (``JobQueue.progress``)."""

    record: JobRecord
    queue_position: int | None  # jobs admitted before it and not yet handed out, while queued
    step: int | None  # denoising steps done, as its worker last published them (running or finished)
    steps: int | None


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    WATCHED = "watched"  # someone else still follows the job: left running
    DONE = "done"  # already finished: nothing to cancel
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class QueueDepth:
    waiting: int  # in the stream, not yet delivered
    running: int  # delivered, not yet acked (includes entries a dead worker still holds)

    @property
    def total(self) -> int:
        return self.waiting + self.running


def _now_ms() -> int:
    return int(time.time() * 1000)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int_or_none(value: bytes | None) -> int | None:
    return int(value) if value is not None else None


def _is_nogroup(exc: ResponseError) -> bool:
    return "NOGROUP " in str(exc)  # also when wrapped in a pipeline error


def _record(job_id: str, raw: Mapping[bytes, bytes]) -> JobRecord | None:
    """A job record from its hash (None when the hash is gone: unknown or expired)."""
    if not raw:
        return None
    data = {_str(k): v for k, v in raw.items()}
    error = data.get("error")
    consumer = data.get("consumer")
    return JobRecord(
        job_id=job_id,
        status=JobStatus(_str(data["status"])),
        result=data.get("result"),
        error=_str(error) if error is not None else None,
        created_ms=int(data.get("created_ms", 0)),
        started_ms=_int_or_none(data.get("started_ms")),
        finished_ms=_int_or_none(data.get("finished_ms")),
        consumer=_str(consumer) if consumer is not None else None,
        meta=json.loads(data.get("meta", b"{}")),
        seq=_int_or_none(data.get("seq")),
        cancelled=data.get("cancelled") == b"1",
    )


def _progress_value(raw: bytes | None) -> tuple[int, int] | None:
    """``b"3/40"`` → (3, 40); anything else (absent, garbled) → None."""
    if raw is None:
        return None
    step, _, steps = _str(raw).partition("/")
    return (int(step), int(steps)) if step.isdigit() and steps.isdigit() else None


class JobQueue:
    """Redis Streams job queue; one instance per process is enough (it holds no per-job state)."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        group: str = "workers",
        reclaim_idle_s: float,
        max_deliveries: int = 3,
        result_ttl_s: int = 3600,
        record_ttl_s: int = 86400,
        dead_maxlen: int = 1000,
    ) -> None:
        kwargs = redis.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError(
                "JobQueue needs a Redis client with decode_responses=False (payloads are binary)"
            )
        self.redis = redis
        self.name = name
        self.group = group
        self.reclaim_idle_s = reclaim_idle_s
        self.max_deliveries = max_deliveries
        self.result_ttl_s = result_ttl_s
        self.record_ttl_s = record_ttl_s
        self.dead_maxlen = dead_maxlen  # dead letters carry payloads (images): keep the stream bounded
        self.stream = f"{name}:jobs"
        self.dead_stream = f"{name}:dead"
        # A blocking command that outlives the client's socket timeout raises TimeoutError, so blocking
        # calls are capped below it (redis-py 8 defaults to 5 s; from_url leaves it as orig_socket_timeout).
        socket_timeout = kwargs.get("socket_timeout", kwargs.get("orig_socket_timeout"))
        self._block_cap_s = 0.8 * socket_timeout if socket_timeout else math.inf
        self._finish = redis.register_script(_FINISH_LUA)
        self._mark_running = redis.register_script(_MARK_RUNNING_LUA)
        self._enqueue_bounded = redis.register_script(_ENQUEUE_BOUNDED_LUA)
        self._cancel = redis.register_script(_CANCEL_LUA)
        self.seq_key = f"{name}:seq"
        self.taken_key = f"{name}:taken"

    @classmethod
    def for_service(
        cls, redis: Redis, settings: CommonSettings, name: str, *, result_ttl_s: int | None = None
    ) -> JobQueue:
        """A service's queue as its settings configure it: ``{ETCHR_REDIS_PREFIX}:{name}``, reclaim time,
        delivery limit and result TTL (``ETCHR_QUEUE_RESULT_TTL_S`` unless the service keeps results longer).
        Each service's ``jobs`` module calls it once, so its API and its workers cannot disagree."""
        return cls(
            redis,
            f"{settings.redis_prefix}:{name}",
            reclaim_idle_s=settings.queue_reclaim_s,
            max_deliveries=settings.queue_max_deliveries,
            result_ttl_s=settings.queue_result_ttl_s if result_ttl_s is None else result_ttl_s,
        )

    def record_key(self, job_id: str) -> str:
        return f"{self.name}:job:{job_id}"

    def done_key(self, job_id: str) -> str:
        return f"{self.name}:done:{job_id}"

    def progress_key(self, job_id: str) -> str:
        return f"{self.name}:progress:{job_id}"

    def waiters_key(self, job_id: str) -> str:
        return f"{self.name}:waiters:{job_id}"

    async def ensure_group(self) -> None:
        """Create the stream and group; from id 0 so jobs enqueued before the group existed are delivered."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def _with_group(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``; on NOGROUP (stream lost, e.g. in a Redis restart) recreate the group, retry once."""
        try:
            return await call()
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
        await self.ensure_group()
        return await call()

    async def enqueue(
        self,
        job_id: str,
        fields: Mapping[str, bytes | str],
        *,
        meta: Mapping[str, str] | None = None,
        max_depth: int | None = None,
    ) -> None:
        """Write the record (queued) and the stream entry atomically. Job ids must be fresh (e.g. uuid4).

        ``max_depth``: raise QueueFull instead when the queue already holds that many jobs (waiting +
        running); the check and the enqueue are one atomic step, so the bound holds under any concurrency.
        """
        if max_depth is None:
            await self.enqueue_many([(job_id, fields, meta or {})])
            return
        keys = [self.stream, self.record_key(job_id), self.done_key(job_id), self.seq_key]
        record = [_now_ms(), json.dumps(dict(meta or {})), self.record_ttl_s]
        args: list[bytes | str | int] = [max_depth, *record]
        for name, value in _stream_entry(job_id, fields).items():
            args.extend((name, value))
        accepted, depth = await self._enqueue_bounded(keys=keys, args=args)
        if not accepted:
            raise QueueFull(int(depth), max_depth)

    async def enqueue_many(
        self, jobs: Sequence[tuple[str, Mapping[str, bytes | str], Mapping[str, str]]]
    ) -> None:
        """Several jobs in one round trip (one MULTI): a reward request enqueues hundreds of queries."""
        if not jobs:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for job_id, fields, meta in jobs:
                entry = _stream_entry(job_id, fields)
                record_key = self.record_key(job_id)
                pipe.delete(record_key, self.done_key(job_id))
                pipe.hset(
                    record_key,
                    mapping={
                        "status": JobStatus.QUEUED.value,
                        "created_ms": _now_ms(),
                        "meta": json.dumps(dict(meta)),
                    },
                )
                pipe.expire(record_key, self.record_ttl_s)
                pipe.xadd(self.stream, entry)
            await pipe.execute()

    async def depth(self) -> QueueDepth:
        """Completed entries are XDEL'd, so XLEN counts waiting + running and XPENDING counts running."""

        async def call() -> QueueDepth:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self.stream)
                pipe.xpending(self.stream, self.group)
                length, pending = await pipe.execute()
            running = int(pending["pending"])
            return QueueDepth(waiting=max(0, length - running), running=running)

        return await self._with_group(call)

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Delivery]:
        """Up to ``count`` new entries. ``block_ms`` None: don't block; a block is capped below the socket
        timeout, so a long one returns empty early instead of raising."""
        if block_ms is not None and self._block_cap_s != math.inf:
            block_ms = min(block_ms or math.inf, int(self._block_cap_s * 1000))

        call = partial(
            self.redis.xreadgroup, self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        response = await self._with_group(call)
        if isinstance(response, dict):  # RESP3 (redis-py 8): {stream: [entries]}
            batches = [entries for wrapped in response.values() for entries in wrapped]
        else:  # RESP2: [[stream, entries]]
            batches = [entries for _, entries in response or []]
        return [self._delivery(eid, data, 1) for entries in batches for eid, data in entries]

    def _delivery(self, entry_id: bytes | str, data: dict[bytes, bytes], deliveries: int) -> Delivery:
        fields = {_str(k): v for k, v in data.items()}
        job_id = _str(fields.pop(JOB_ID_FIELD, b""))
        return Delivery(entry_id=_str(entry_id), job_id=job_id, fields=fields, deliveries=deliveries)

    async def reclaim(self, consumer: str, count: int = 16) -> list[Delivery]:
        """Take over entries idle >= reclaim_idle_s (their worker died); dead-letter the ones delivered more
        than max_deliveries times instead of returning them."""
        min_idle_ms = int(self.reclaim_idle_s * 1000)
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: bytes | str = "0-0"
        while len(claimed) < count:
            call = partial(
                self.redis.xautoclaim,
                self.stream,
                self.group,
                consumer,
                min_idle_ms,
                cursor,
                count=count - len(claimed),
            )
            # Entries XAUTOCLAIM reports as deleted (third element) are dropped from the PEL by Redis itself.
            cursor, entries, *_ = await self._with_group(call)
            claimed.extend((eid, data) for eid, data in entries if eid is not None)
            if _str(cursor) == "0-0":
                break
        if not claimed:
            return []

        # XAUTOCLAIM does not say how often an entry was delivered; XPENDING does.
        async with self.redis.pipeline(transaction=False) as pipe:
            for eid, _ in claimed:
                pipe.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
            pending = await pipe.execute()

        out: list[Delivery] = []
        for (eid, data), rows in zip(claimed, pending, strict=True):
            if not rows:  # acked meanwhile by its (slow, not dead) first worker
                continue
            delivery = self._delivery(eid, data, int(rows[0]["times_delivered"]))
            if delivery.deliveries > self.max_deliveries:
                await self._dead_letter(delivery, consumer)
            else:
                out.append(delivery)
        return out

    async def keep_alive(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Reset the idle time of entries ``consumer`` is still working on (XCLAIM … JUSTID, which leaves
        the delivery count alone), so ``reclaim`` takes only entries whose worker died, however long a
        batch runs. Entries finished meanwhile are ignored by Redis."""
        if not deliveries:
            return
        ids = [delivery.entry_id for delivery in deliveries]
        await self._with_group(
            partial(self.redis.xclaim, self.stream, self.group, consumer, 0, ids, justid=True)
        )

    async def _dead_letter(self, delivery: Delivery, consumer: str) -> None:
        reason = (
            f"delivered {delivery.deliveries} times (max {self.max_deliveries}); each worker holding it "
            f"went idle for {self.reclaim_idle_s:g} s without finishing (crashed or stalled)"
        )
        entry: dict[str, bytes | str | int] = {
            JOB_ID_FIELD: delivery.job_id,
            "reason": reason,
            "deliveries": delivery.deliveries,
            "entry_id": delivery.entry_id,
            "consumer": consumer,
        }
        entry.update({DEAD_FIELD_PREFIX + k: v for k, v in delivery.fields.items()})
        await self.redis.xadd(self.dead_stream, entry, maxlen=self.dead_maxlen, approximate=True)
        await self._finish_job(delivery, JobStatus.FAILED, "error", f"job abandoned: {reason}")

    async def mark_running(self, delivery: Delivery, consumer: str) -> bool:
        """False when the job already finished (a re-delivery): the caller then only acks."""
        keys = [self.record_key(delivery.job_id), self.taken_key]
        return bool(await self._mark_running(keys=keys, args=[_now_ms(), consumer, self.record_ttl_s]))

    async def complete(self, delivery: Delivery, result: bytes, *, retry_s: float = 0.0) -> None:
        """Store the result (status DONE, TTL result_ttl_s), notify waiters, then XACK + XDEL. Idempotent.

        ``retry_s`` > 0 keeps trying through a lost connection for that long (0.2 s doubling to 2 s) before
        raising: a result that took a GPU batch to compute is worth storing after a Redis blip rather than
        recomputing after reclaim, and storing twice is harmless.
        """
        await self._finish_job(delivery, JobStatus.DONE, "result", result, retry_s)

    async def fail(self, delivery: Delivery, error: str, *, retry_s: float = 0.0) -> None:
        """Like complete, with status FAILED and an error message."""
        await self._finish_job(delivery, JobStatus.FAILED, "error", error, retry_s)

    async def _finish_job(
        self, delivery: Delivery, status: JobStatus, key: str, value: bytes | str, retry_s: float = 0.0
    ) -> bool:
        keys = [self.record_key(delivery.job_id), self.done_key(delivery.job_id), self.stream]
        deadline, delay = time.monotonic() + retry_s, 0.2
        while True:
            args = [status.value, _now_ms(), key, value, self.result_ttl_s, self.group, delivery.entry_id]
            try:
                return bool(await self._finish(keys=keys, args=args))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                logger.warning("could not store job %s (%s); retrying", delivery.job_id, exc)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)

    async def ack(self, delivery: Delivery) -> None:
        """Drop an entry without touching its record (used after mark_running returned False)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, delivery.entry_id)
            pipe.xdel(self.stream, delivery.entry_id)
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        return _record(job_id, await self.redis.hgetall(self.record_key(job_id)))

    async def publish_progress(self, steps_done: Mapping[str, tuple[int, int]]) -> None:
        """Store (step, steps) for running jobs, in one round trip; kept for the record's lifetime at most.

        Workers call it from a throttled publisher, never from the denoising loop itself.
        """
        if not steps_done:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, (step, steps) in steps_done.items():
                pipe.set(self.progress_key(job_id), f"{step}/{steps}", ex=self.record_ttl_s)
            await pipe.execute()

    async def progress(self, job_id: str) -> JobProgress | None:
        """The record and its progress (queue position while queued; published step while running)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.record_key(job_id))
            pipe.get(self.progress_key(job_id))
            pipe.get(self.taken_key)
            raw, published, taken = await pipe.execute()
        record = _record(job_id, raw)
        if record is None:
            return None
        position = step = steps = None
        if record.status is JobStatus.QUEUED and record.seq is not None:
            position = max(0, record.seq - int(taken or 0) - 1)
        if record.status is not JobStatus.QUEUED:  # a finished job keeps where it got to (N of N when done)
            step, steps = _progress_value(published) or (None, None)
        return JobProgress(record, position, step, steps)

    async def add_waiter(self, job_id: str, token: str, ttl_s: float) -> None:
        """Say that ``token`` follows the job for ``ttl_s`` more seconds (refresh it while following)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.waiters_key(job_id), {token: _now_ms() + int(ttl_s * 1000)})
            pipe.expire(self.waiters_key(job_id), self.record_ttl_s)
            await pipe.execute()

    async def remove_waiter(self, job_id: str, token: str) -> None:
        await self.redis.zrem(self.waiters_key(job_id), token)

    async def cancel(self, job_id: str, reason: str, *, waiter: str | None = None) -> CancelOutcome:
        """Cancel a queued or running job, atomically; with ``waiter``, only if no other waiter follows it.

        A queued job is skipped by the worker that reads it; a running one finishes its batch but its
        result is dropped (the first terminal state sticks), so a cancel never races a completion.
        """
        keys = [self.record_key(job_id), self.done_key(job_id), self.waiters_key(job_id)]
        outcome = await self._cancel(keys=keys, args=[waiter or "", _now_ms(), reason, self.result_ttl_s])
        return CancelOutcome(_str(outcome))

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The record once DONE/FAILED, None on timeout (see :meth:`wait_many`, which does the waiting)."""
        return (await self.wait_many([job_id], timeout_s)).get(job_id)

    async def wait_many(self, job_ids: Collection[str], timeout_s: float) -> dict[str, JobRecord]:
        """The finished records of many jobs, waiting on all of them over ONE connection.

        A batch caller (the reward service waits on hundreds of queries per request) would otherwise hold a
        connection per job; here one BLPOP watches every remaining done-list, in slices of at most 1 s (never
        0, BLPOP's "forever"; never past the socket timeout), and a quiet slice re-reads every remaining
        record, so a lost notification costs one slice at most. A popped notification is put back, so other
        waiters on the same job wake too. Jobs unfinished at the deadline are absent from the result.
        """
        deadline = time.monotonic() + timeout_s
        remaining = set(job_ids)
        to_check = set(remaining)  # everything at first and after a quiet slice; else just the job notified
        finished: dict[str, JobRecord] = {}
        done_prefix = self.done_key("")
        token: tuple[bytes, bytes] | None = None  # a notification popped last round, to put back
        while remaining:
            ordered = sorted(to_check)
            async with self.redis.pipeline(transaction=False) as pipe:
                if token is not None:  # other waiters on the same job still need it
                    pipe.lpush(token[0], token[1])
                    pipe.expire(token[0], self.result_ttl_s)
                    token = None
                for job_id in ordered:
                    pipe.hgetall(self.record_key(job_id))
                replies = (await pipe.execute())[-len(ordered) :] if ordered else []
            for job_id, raw in zip(ordered, replies, strict=True):
                record = _record(job_id, raw)
                if record is not None and record.status in FINISHED:
                    finished[job_id] = record
                    remaining.discard(job_id)
            left = deadline - time.monotonic()
            if not remaining or left <= 0:
                break
            slice_s = max(0.01, min(1.0, left, self._block_cap_s))
            popped = await self.redis.blpop(
                [self.done_key(job_id) for job_id in sorted(remaining)], timeout=slice_s
            )
            if popped is None:
                to_check = set(remaining)
                continue
            token = (popped[0], popped[1])
            to_check = {_str(popped[0]).removeprefix(done_prefix)}
        return finished
