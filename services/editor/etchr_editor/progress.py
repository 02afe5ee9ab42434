"""Denoising progress from the sampling thread to Redis, without slowing the sampler.

The sampler calls its step callback on the thread that drives the GPU; a Redis round trip there would
stall the loop once per step. So the callback only keeps the latest counts and wakes the worker's event
loop (``call_soon_threadsafe``: no I/O, no lock), and a task on that loop writes the latest counts at most
every ``interval_s``: Redis sees a bounded write rate per worker, whatever the step rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import redis.exceptions

from etchr.queue import JobQueue
from etchr_editor.sampler import StepCallback

logger = logging.getLogger("etchr.editor.progress")

PUBLISH_INTERVAL_S = 0.1  # at most ten progress writes a second per worker


class ProgressPublisher:
    """One per batch: ``reporter`` makes the sampler's callback; ``run`` (a task) publishes its reports."""

    def __init__(
        self, queue: JobQueue, loop: asyncio.AbstractEventLoop, *, interval_s: float = PUBLISH_INTERVAL_S
    ) -> None:
        self._queue = queue
        self._loop = loop
        self._interval_s = interval_s
        self._latest: dict[str, tuple[int, int]] | None = None  # replaced whole: one atomic store
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def reporter(self, job_ids: Sequence[str], steps: int) -> StepCallback:
        """The sampler's ``on_step`` for jobs ``job_ids`` (its requests, in order) of ``steps`` steps."""
        ids = list(job_ids)

        def on_step(done: list[int]) -> None:  # on the sampling thread: no I/O here
            self._latest = {job_id: (step, steps) for job_id, step in zip(ids, done, strict=True)}
            if not self._wake.is_set():
                self._loop.call_soon_threadsafe(self._wake.set)

        return on_step

    async def publish(self, steps_done: dict[str, tuple[int, int]]) -> None:
        """Write ``steps_done`` now (the 0/N at the start and N/N at the end of a batch); a Redis error
        is logged, not raised: progress is a courtesy, the edit itself must not fail for it."""
        try:
            await self._queue.publish_progress(steps_done)
        except redis.exceptions.RedisError as exc:
            logger.warning("could not publish progress: %s", exc)

    async def run(self) -> None:
        """Publish the latest counts whenever the sampler reported some, then rest ``interval_s``; returns
        after ``stop``, once no write is in flight (so a final ``publish`` is never overtaken by one)."""
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            latest, self._latest = self._latest, None
            if latest and not self._stopping.is_set():
                await self.publish(latest)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
