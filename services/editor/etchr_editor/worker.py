"""The editor GPU worker: pulls compatible jobs from the Redis stream, denoises them together, stores results.

Delivery is at-least-once: a job is acked only after its result is stored, so a worker killed mid-batch
leaves its jobs pending, and another worker reclaims them after ``ETCHR_QUEUE_RECLAIM_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import redis.exceptions
from PIL import Image

from etchr.http import create_app, redis_readiness
from etchr.imaging import encode_image_base64, fit_model_size, restore_size
from etchr.queue import Delivery, JobQueue
from etchr.redis_client import RedisBackoff, connect_redis
from etchr.settings import EditorSettings
from etchr.workers import run_worker_process
from etchr_editor.jobs import EDITOR_FAILED, MALFORMED_JOB, EditJob, EditResult, editor_queue, read_job
from etchr_editor.metrics import EditorMetrics
from etchr_editor.model import LoadedEditor, load_editor
from etchr_editor.progress import ProgressPublisher
from etchr_editor.sampler import BatchedSampler, SampleRequest

logger = logging.getLogger("etchr.editor.worker")

READ_BLOCK_MS = 500  # short, so a stop request is noticed between reads


@dataclass(frozen=True)
class WarmUp:
    """One 1-step warm-up edit: model-size (w, h), how many requests, and a guidance that sets CFG on/off."""

    size: tuple[int, int]
    requests: int = 1
    guidance_scale: float = 2.0


def warmup_plan(settings: EditorSettings) -> list[WarmUp]:
    """The edits a worker runs before it is ready, at ``ETCHR_EDITOR_WARMUP_SIZES`` (default: see settings).

    Eager, one CFG edit per size. Compiled, the plan also walks the shapes torch.compile specialises on:
    its first graph is static; a size or batch change then recompiles shape-generic graphs, one for
    batches of 2 or more (CFG edits; from the second size on, two requests) and one for batch 1 (single-row
    edits without CFG, which torch always specialises). Over two sizes no later request compiles (checked
    with ``TORCH_LOGS=recompiles``; tests/editor/test_worker.py).
    """
    sides = settings.editor_warmup_sizes or ([512, 1024] if settings.editor_compile else [64])
    fitted = (fit_model_size(side, side, max_pixels=settings.editor_max_model_pixels) for side in sides)
    sizes = list(dict.fromkeys(fitted))
    if not settings.editor_compile:
        return [WarmUp(size) for size in sizes]
    pair = min(2, settings.editor_max_batch)
    return [
        warm
        for k, size in enumerate(sizes)
        for warm in (WarmUp(size, 1 if k == 0 else pair), WarmUp(size, 1, guidance_scale=1.0))
    ]


@dataclass
class _Work:
    delivery: Delivery
    job: EditJob
    request: SampleRequest


class EditorWorker:
    """One consumer of the editor stream. ``run`` loops until ``stop`` is set, finishing the batch in hand."""

    def __init__(
        self,
        queue: JobQueue,
        settings: EditorSettings,
        metrics: EditorMetrics,
        *,
        consumer: str | None = None,
        editor: LoadedEditor | None = None,
    ) -> None:
        """``editor``: an already loaded pipeline to serve instead of loading ``ETCHR_EDITOR_MODEL``
        (embedding the worker where the pipeline is built in-process, as the GPU benchmark does)."""
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.editor: LoadedEditor | None = editor
        self.sampler: BatchedSampler | None = None
        self.load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.sampler is not None

    async def readiness(self) -> str | None:
        """A readiness check: None once the model is loaded, else what it is waiting for or why it failed."""
        if self.ready:
            return None
        if self.load_error:
            return f"editor model failed to load: {self.load_error}"
        return "editor model is loading"

    def load(self) -> None:
        """Load the checkpoint (and LoRA) unless one was given, warm it up. Blocking: run it in a thread."""
        started = time.perf_counter()
        editor = self.editor
        if editor is None:
            if not self.settings.editor_model:
                raise ValueError(
                    "ETCHR_EDITOR_MODEL is not set: name a Flux2KleinPipeline hub id or local directory"
                )
            editor = load_editor(
                self.settings.editor_model,
                loras=self.settings.editor_lora,
                lora_scale=self.settings.editor_lora_scale,
                device=self.settings.editor_device,
                dtype=self.settings.editor_dtype,
                compile=self.settings.editor_compile,
            )
        sampler = BatchedSampler(editor.pipe, max_rows=self.settings.editor_max_batch)
        if self.settings.editor_warmup:
            for warm in warmup_plan(self.settings):
                warm_started = time.perf_counter()
                sampler.warmup(warm.size, requests=warm.requests, guidance_scale=warm.guidance_scale)
                logger.info(
                    "warmed up at %d×%d (%d request(s), guidance %.1f) in %.1f s",
                    *warm.size,
                    warm.requests,
                    warm.guidance_scale,
                    time.perf_counter() - warm_started,
                )
        self.editor, self.sampler = editor, sampler
        logger.info(
            "editor model %s ready in %.1f s (%s)",
            editor.info["name"],
            time.perf_counter() - started,
            editor.info,
        )

    async def run(self, stop: asyncio.Event) -> None:
        if self.sampler is None:
            try:
                await asyncio.to_thread(self.load)
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                logger.exception("editor model failed to load")
                raise
        backoff = RedisBackoff(logger)
        while not stop.is_set():
            try:
                await self.run_once()
                backoff.reset()
            except redis.exceptions.RedisError as exc:  # down, or refusing writes (maxmemory): wait it out
                await backoff.pause(stop, exc)
        logger.info("worker %s stopped", self.consumer)

    async def run_once(self) -> int:
        """Collect one batch (stale entries of dead workers first) and process it; returns jobs handled."""
        limit = self.settings.editor_max_batch
        deliveries = await self.queue.reclaim(self.consumer, count=limit)
        if not deliveries:
            deliveries = await self.queue.read(self.consumer, count=limit, block_ms=READ_BLOCK_MS)
        wait_s = self.settings.editor_batch_wait_ms / 1000
        if deliveries and wait_s > 0:
            deadline = time.monotonic() + wait_s
            while len(deliveries) < limit and (left := deadline - time.monotonic()) > 0:
                more = await self.queue.read(
                    self.consumer, count=limit - len(deliveries), block_ms=max(1, int(left * 1000))
                )
                deliveries.extend(more)
        if deliveries:
            await self.process(deliveries)
        return len(deliveries)

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        heartbeat = asyncio.create_task(self._keep_alive(deliveries))
        try:
            groups: dict[tuple, list[_Work]] = defaultdict(list)
            for delivery in deliveries:
                work = await self._prepare(delivery)
                if work is not None:
                    groups[work.request.batch_key()].append(work)
            for group in groups.values():
                await self._run_group(group)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _keep_alive(self, deliveries: Sequence[Delivery]) -> None:
        """While the batch runs, reset its entries' idle time every third of ``ETCHR_QUEUE_RECLAIM_S``:
        a batch longer than the reclaim time (n × steps at 1024²) is then never re-delivered to another
        worker while this one lives; if it dies, the heartbeats stop and reclaim works as before."""
        interval = max(0.1, self.queue.reclaim_idle_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.queue.keep_alive(self.consumer, deliveries)
            except redis.exceptions.RedisError as exc:  # next beat retries; reclaim stays the safety net
                logger.warning("could not keep batch entries alive: %s", exc)

    async def _prepare(self, delivery: Delivery) -> _Work | None:
        try:
            job, image = read_job(delivery)
        except (KeyError, ValueError) as exc:
            await self.queue.fail(delivery, f"{MALFORMED_JOB}: {exc}")
            self.metrics.jobs.labels("failed").inc()
            return None
        if not await self.queue.mark_running(delivery, self.consumer):
            await self.queue.ack(delivery)  # already finished by a worker that died before acking
            return None
        self.metrics.queue_wait.observe(max(0.0, time.time() - job.enqueued_ms / 1000))
        request = SampleRequest(
            image=image,
            prompt=job.prompt,
            seeds=tuple(job.seeds),
            steps=job.steps,
            guidance_scale=job.guidance_scale,
        )
        return _Work(delivery, job, request)

    async def _run_group(self, group: list[_Work]) -> None:
        assert self.sampler is not None and self.editor is not None
        rows = sum(len(work.job.seeds) for work in group)
        steps = group[0].job.steps
        job_ids = [work.job.id for work in group]
        publisher = task = None
        if self.settings.editor_progress:
            publisher = ProgressPublisher(self.queue, asyncio.get_running_loop())
            await publisher.publish({job_id: (0, steps) for job_id in job_ids})
            task = asyncio.create_task(publisher.run())
        started_ms = int(time.time() * 1000)
        started = time.perf_counter()
        try:
            on_step = publisher.reporter(job_ids, steps) if publisher is not None else None
            requests = [work.request for work in group]
            outputs = await asyncio.to_thread(self.sampler.sample, requests, on_step=on_step)
        except Exception as exc:
            logger.exception("sampler failed on a batch of %d jobs", len(group))
            for work in group:
                message = f"{EDITOR_FAILED}: {type(exc).__name__}: {exc}"
                await self.queue.fail(work.delivery, message, retry_s=self.queue.reclaim_idle_s)
                self.metrics.jobs.labels("failed").inc()
            return
        finally:
            if publisher is not None and task is not None:
                publisher.stop()
                await task
        infer_s = time.perf_counter() - started
        if publisher is not None:  # N of N, whatever the throttle left unsent, before the result lands
            await publisher.publish({job_id: (steps, steps) for job_id in job_ids})
        self.metrics.infer.observe(infer_s)
        self.metrics.batch_rows.observe(rows)
        model_info = {**self.editor.info, "steps": group[0].job.steps}
        for work, images in zip(group, outputs, strict=True):
            encoded = await asyncio.to_thread(_encode_all, images, work.job)
            result = EditResult(
                images=encoded,
                seeds=work.job.seeds,
                model={**model_info, "guidance_scale": work.job.guidance_scale},
                started_ms=started_ms,
                infer_ms=infer_s * 1000,
                batch_rows=rows,
            )
            # A GPU batch went into this: ride out a Redis blip (up to the reclaim time) rather than redo it
            await self.queue.complete(
                work.delivery, result.model_dump_json().encode(), retry_s=self.queue.reclaim_idle_s
            )
            self.metrics.edits.inc(len(images))
            self.metrics.jobs.labels("done").inc()


def _encode_all(images: Sequence[Image.Image], job: EditJob) -> list[str]:
    """Each image back at the job's output size, encoded as the client asked (PNG by default)."""
    return [
        encode_image_base64(
            restore_size(image, job.output_size), job.output_format, quality=job.output_compression
        )
        for image in images
    ]


async def serve_worker(settings: EditorSettings) -> None:
    """``etchr worker editor``: one worker process, SIGTERM finishes the batch.

    On ``ETCHR_EDITOR_WORKER_METRICS_PORT`` it serves ``/metrics`` (queue gauges read from Redis on scrape),
    ``/healthz`` and ``/readyz`` (503 until the model is loaded and while Redis is unreachable), so an
    orchestrator's startup probe waits for the model, not merely for the process.
    """
    metrics = EditorMetrics()
    client = connect_redis(settings)
    queue = editor_queue(client, settings)
    metrics.queue_depth.queue = queue
    worker = EditorWorker(queue, settings, metrics)
    probes = create_app(
        title="ETCHR editor worker",
        settings=settings,
        metrics=metrics,
        readiness=[redis_readiness(lambda: client, key_prefix=settings.redis_prefix), worker.readiness],
    )
    try:
        await run_worker_process(
            worker, settings, probes=probes, probe_port=settings.editor_worker_metrics_port
        )
    finally:
        await client.aclose()
