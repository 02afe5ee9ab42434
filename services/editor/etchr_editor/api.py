"""The editor's HTTP front: validates and enqueues edits, waits for results.

It imports neither torch nor diffusers (it speaks to workers only through ``etchr_editor.jobs``), so the
front runs from the slim image on many replicas. ``etchr_editor.service`` adds the in-process worker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

import anyio
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from etchr.fast_json_route import FastJsonRoute
from etchr.http import ServiceError, redis_readiness, require_api_key
from etchr.http import create_app as create_service_app
from etchr.imaging import ImageLimits, decode_base64_image, decode_image_bytes, to_model_size
from etchr.model_names import BASE_MODEL, UnknownModel, task_for_model
from etchr.protocol import MAX_KEYWORD_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS
from etchr.protocol.edit import (
    EditProgress,
    EditRequest,
    EditResponse,
    EditTask,
    EditTimings,
    JobAccepted,
    JobCancelResponse,
    JobStatusResponse,
    OpenAIImage,
    OpenAIImagesResponse,
    OutputFormat,
)
from etchr.queue import FINISHED, CancelOutcome, JobProgress, JobQueue, JobRecord, JobStatus, QueueFull
from etchr.redis_client import connect_redis
from etchr.settings import EditorSettings
from etchr.tasks import TASK_IDS, TaskRegistry
from etchr.workers import QueueWorker, Readiness, hosted_worker
from etchr_editor.jobs import EditJob, EditResult, editor_queue, job_fields, job_meta
from etchr_editor.metrics import EditorMetrics

logger = logging.getLogger("etchr.editor.api")

RETRY_AFTER_FULL_S = "5"
EVENTS_POLL_S = 0.1  # how often an event stream re-reads its job (one small Redis round trip)
WAITER_TTL_S = 15.0  # an event stream's waiter token lapses this long after its last refresh
WAITER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class HostedWorker(QueueWorker, Protocol):
    """A worker the front can host in-process: it also says whether it can take jobs yet."""

    async def readiness(self) -> str | None: ...


WorkerFactory = Callable[[JobQueue, EditorMetrics], HostedWorker]


@dataclass
class EditorRuntime:
    """What the front holds for its lifetime; reached by routes through ``get_runtime``."""

    settings: EditorSettings
    redis: aioredis.Redis
    queue: JobQueue
    tasks: TaskRegistry
    metrics: EditorMetrics
    limits: ImageLimits
    worker: HostedWorker | None = None


def get_runtime(request: Request) -> EditorRuntime:
    return request.app.state.runtime


def _now_ms() -> int:
    return int(time.time() * 1000)


async def submit(
    runtime: EditorRuntime,
    *,
    image_bytes: bytes | None = None,
    image_b64: str | None = None,
    question: str,
    task: EditTask,
    n: int,
    seed: int | None,
    steps: int | None,
    guidance_scale: float | None,
    output_size: tuple[int, int] | None = None,
    output_format: OutputFormat = "png",
    output_compression: int | None = None,
) -> EditJob:
    """Validate against the service limits, scale into the model budget, enqueue; 4xx for bad input."""
    settings = runtime.settings
    if n > settings.editor_max_n:
        raise ServiceError(400, "invalid_field", f"n={n} exceeds ETCHR_EDITOR_MAX_N={settings.editor_max_n}")
    steps = steps if steps is not None else settings.editor_steps
    if steps > settings.editor_max_steps:
        raise ServiceError(
            400, "invalid_field", f"steps={steps} exceeds ETCHR_EDITOR_MAX_STEPS={settings.editor_max_steps}"
        )
    if image_b64 is not None:
        image = await run_in_threadpool(decode_base64_image, image_b64, runtime.limits)
    else:
        assert image_bytes is not None
        image = await run_in_threadpool(decode_image_bytes, image_bytes, runtime.limits)
    # A cheap early refusal, before the resize; the limit itself is enforced atomically by the enqueue below.
    depth = await runtime.queue.depth()
    if depth.total >= settings.editor_queue_max:
        raise _queue_full(runtime, depth.total)
    model_image = await run_in_threadpool(to_model_size, image, max_pixels=settings.editor_max_model_pixels)
    first_seed = seed if seed is not None else secrets.randbelow(2**31)
    job = EditJob(
        id=uuid.uuid4().hex,
        task=task,
        prompt=runtime.tasks.editor_prompt(task, question),
        seeds=[first_seed + i for i in range(n)],
        steps=steps,
        guidance_scale=guidance_scale if guidance_scale is not None else settings.editor_guidance,
        image_size=model_image.size,
        output_size=output_size or image.size,
        enqueued_ms=_now_ms(),
        output_format=output_format,
        output_compression=output_compression,
    )
    try:
        await runtime.queue.enqueue(
            job.id, job_fields(job, model_image), meta=job_meta(job), max_depth=settings.editor_queue_max
        )
    except QueueFull as exc:
        raise _queue_full(runtime, exc.depth) from None
    return job


def _queue_full(runtime: EditorRuntime, depth: int) -> ServiceError:
    runtime.metrics.rejected.inc()
    limit = runtime.settings.editor_queue_max
    return ServiceError(
        429,
        "queue_full",
        f"the editor queue holds {depth} jobs (limit {limit}, ETCHR_EDITOR_QUEUE_MAX); retry later",
        headers={"Retry-After": RETRY_AFTER_FULL_S},
    )


def build_response(record: JobRecord, *, finished_ms: int | None = None) -> EditResponse:
    assert record.result is not None
    result = EditResult.model_validate_json(record.result)
    end_ms = finished_ms or record.finished_ms or _now_ms()
    return EditResponse(
        id=record.job_id,
        task=record.meta["task"],  # type: ignore[arg-type]
        prompt=record.meta["prompt"],
        images=result.images,
        seeds=result.seeds,
        model=result.model,
        timings=EditTimings(
            queue_ms=max(0.0, result.started_ms - record.created_ms),
            infer_ms=result.infer_ms,
            total_ms=max(0.0, end_ms - record.created_ms),
        ),
    )


async def await_result(runtime: EditorRuntime, job: EditJob) -> EditResponse:
    deadline = runtime.settings.editor_deadline_s
    record = await runtime.queue.wait(job.id, deadline)
    if record is None:
        raise ServiceError(
            504,
            "deadline_exceeded",
            f"edit {job.id} did not finish within {deadline:g} s (ETCHR_EDITOR_DEADLINE_S); "
            f"it is still queued or running: poll GET /jobs/{job.id}",
        )
    if record.cancelled:
        raise ServiceError(409, "job_cancelled", f"edit {job.id} was cancelled: {record.error}")
    if record.status is JobStatus.FAILED:
        raise ServiceError(500, "edit_failed", f"edit {job.id} failed: {record.error}")
    return build_response(record, finished_ms=_now_ms())


router = APIRouter(dependencies=[Depends(require_api_key)], route_class=FastJsonRoute)


@router.post("/edit", response_model=EditResponse)
async def edit(body: EditRequest, runtime: EditorRuntime = Depends(get_runtime)) -> EditResponse:
    """Edit an image for a question and wait for the result (504 past ``ETCHR_EDITOR_DEADLINE_S``)."""
    job = await submit(runtime, image_b64=body.image, **body.model_dump(exclude={"image"}))
    return await await_result(runtime, job)


@router.post("/jobs", status_code=202, response_model=JobAccepted)
async def create_job(body: EditRequest, runtime: EditorRuntime = Depends(get_runtime)) -> JobAccepted:
    """Enqueue an edit and return at once; poll ``GET /jobs/{id}``."""
    job = await submit(runtime, image_b64=body.image, **body.model_dump(exclude={"image"}))
    return JobAccepted(id=job.id)


def edit_progress(progress: JobProgress) -> EditProgress:
    """The public view of a job's progress: queue position while queued, step i of N while running."""
    record = progress.record
    return EditProgress(
        status=record.status.value,
        queue_position=progress.queue_position,
        step=progress.step,
        steps=progress.steps,
        cancelled=True if record.cancelled else None,
    )


def _not_found(job_id: str) -> ServiceError:
    return ServiceError(404, "not_found", f"no job {job_id!r} (unknown, or its result expired)")


async def existing_job(job_id: str, runtime: EditorRuntime = Depends(get_runtime)) -> JobProgress:
    """The job's record and progress, or 404 before any response starts (an event stream cannot 404 later)."""
    progress = await runtime.queue.progress(job_id)
    if progress is None:
        raise _not_found(job_id)
    return progress


@router.get("/jobs/{job_id}", response_model=JobStatusResponse, response_model_exclude_none=True)
async def get_job(job_id: str, progress: JobProgress = Depends(existing_job)) -> JobStatusResponse:
    record = progress.record
    response = JobStatusResponse(
        id=job_id, status=record.status.value, progress=edit_progress(progress), error=record.error
    )
    if record.status is JobStatus.DONE:
        response.result = build_response(record)
    return response


# Its errors (404 before the stream starts, 401, 422) are JSON, not events: say so in the OpenAPI document.
_JSON_ERRORS = {
    status: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for status in ("4XX", "5XX")
}


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, responses=_JSON_ERRORS)  # type: ignore[arg-type]
async def job_events(
    job_id: str,
    waiter: str | None = Query(
        default=None,
        pattern=WAITER_PATTERN,
        description="the follower's token: DELETE /jobs/{id}?waiter=<it> cancels only if no one else follows",
    ),
    first: JobProgress = Depends(existing_job),
    runtime: EditorRuntime = Depends(get_runtime),
) -> AsyncIterable[ServerSentEvent]:
    """Stream the job's ``EditProgress`` as server-sent events, one per change, until it is done or failed
    (the last event); fetch the result with ``GET /jobs/{id}``. While streaming, the follower counts as a
    waiter of the job, so another follower's ``DELETE ?waiter=`` leaves the job running."""
    queue = runtime.queue
    token = waiter or uuid.uuid4().hex
    await queue.add_waiter(job_id, token, WAITER_TTL_S)
    refreshed = time.monotonic()
    current: JobProgress | None = first
    last: EditProgress | None = None
    try:
        while current is not None:
            progress = edit_progress(current)
            if progress != last:
                yield ServerSentEvent(raw_data=progress.model_dump_json(exclude_none=True))
                last = progress
            if current.record.status in FINISHED:
                return
            await asyncio.sleep(EVENTS_POLL_S)
            if time.monotonic() - refreshed > WAITER_TTL_S / 3:
                await queue.add_waiter(job_id, token, WAITER_TTL_S)
                refreshed = time.monotonic()
            current = await queue.progress(job_id)  # None: the record expired under a very long stream
    finally:
        # Also on a client's disconnect, when this task is being cancelled: shield the last write.
        with anyio.CancelScope(shield=True), suppress(redis.exceptions.RedisError):
            await queue.remove_waiter(job_id, token)


@router.delete("/jobs/{job_id}", response_model=JobCancelResponse)
async def cancel_job(
    job_id: str,
    waiter: str | None = Query(
        default=None,
        pattern=WAITER_PATTERN,
        description="cancel only if no follower but this one (its /events token) still waits for the job",
    ),
    runtime: EditorRuntime = Depends(get_runtime),
) -> JobCancelResponse:
    """Cancel a queued job (the worker skips it) or a running one (its result is dropped when its batch
    ends). Cancelling a finished job changes nothing (``cancelled: false``)."""
    outcome = await runtime.queue.cancel(job_id, f"cancelled by DELETE /jobs/{job_id}", waiter=waiter)
    if outcome is CancelOutcome.UNKNOWN:
        raise _not_found(job_id)
    record = await runtime.queue.get(job_id)
    if record is None:
        raise _not_found(job_id)
    detail = {
        CancelOutcome.CANCELLED: "cancelled",
        CancelOutcome.WATCHED: "left running: another follower still waits for it",
        CancelOutcome.DONE: "already done",
        CancelOutcome.FAILED: "already failed" if not record.cancelled else "already cancelled",
    }[outcome]
    return JobCancelResponse(
        id=job_id,
        cancelled=outcome is CancelOutcome.CANCELLED,
        status=record.status.value,
        detail=detail,
    )


class OpenAIEditForm(BaseModel):
    """The form fields of OpenAI's ``images.edit`` we honour; its other fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    n: int = Field(default=1, ge=1, le=64)
    size: str | None = Field(default=None, max_length=MAX_KEYWORD_CHARS)
    response_format: str | None = Field(default=None, max_length=MAX_KEYWORD_CHARS)
    model: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)


_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def _openai_task(model: str | None) -> EditTask:
    """``model`` names the task by the one rule (``etchr.model_names``): ``etchr-logic`` or ``logic``;
    absent means ``perception``. ``etchr`` (routing) and ``etchr-none`` are the verifier's: the editor
    cannot route and always edits."""
    if not model:
        return "perception"
    valid = ", ".join(f"{BASE_MODEL}-{task}" for task in TASK_IDS)
    try:
        task = task_for_model(model)
    except UnknownModel as exc:
        raise ServiceError(400, "invalid_field", f"{exc} (the editor takes {valid})", param="model") from None
    if task not in TASK_IDS:
        raise ServiceError(
            400,
            "invalid_field",
            f"model {model!r} asks the verifier to route or not to edit; the editor edits one named "
            f"family: use one of {valid}",
            param="model",
        )
    return task  # type: ignore[return-value]


def _openai_size(size: str | None) -> tuple[int, int] | None:
    if size is None or size == "auto":
        return None
    match = _SIZE.match(size)
    if not match or not all(64 <= int(side) <= 4096 for side in match.groups()):
        raise ServiceError(
            400, "invalid_field", f"size {size!r} must be 'auto' or WxH with sides in 64..4096"
        )
    return int(match[1]), int(match[2])


@router.post("/v1/images/edits", response_model=OpenAIImagesResponse, response_model_exclude_none=True)
async def openai_images_edit(
    request: Request, runtime: EditorRuntime = Depends(get_runtime)
) -> OpenAIImagesResponse:
    """OpenAI Images API compatible edit: ``prompt`` is the question, ``model`` may name the task."""
    async with request.form() as form:
        uploads = [value for key in ("image", "image[]") for value in form.getlist(key)]
        if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
            raise ServiceError(400, "invalid_field", "send exactly one image file in the 'image' field")
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        try:
            params = OpenAIEditForm.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ServiceError(422, "validation_error", problems) from None
        if params.response_format not in (None, "b64_json"):
            raise ServiceError(400, "invalid_field", "only response_format=b64_json is supported")
        raw = await uploads[0].read()
    job = await submit(
        runtime,
        image_bytes=raw,
        question=params.prompt,
        task=_openai_task(params.model),
        n=params.n,
        seed=None,
        steps=None,
        guidance_scale=None,
        output_size=_openai_size(params.size),
        output_format=params.output_format,
        output_compression=params.output_compression,
    )
    result = await await_result(runtime, job)
    return OpenAIImagesResponse(
        created=int(time.time()), data=[OpenAIImage(b64_json=image) for image in result.images]
    )


def create_app(settings: EditorSettings | None = None, *, worker: WorkerFactory | None = None) -> FastAPI:
    """The editor's HTTP front. ``worker`` builds a worker to host in-process, from the front's queue and
    metrics (``etchr_editor.service`` passes one unless ``ETCHR_EDITOR_WORKER`` is off); its readiness
    joins the front's ``/readyz``."""
    settings = settings or EditorSettings()
    metrics = EditorMetrics()
    tasks = TaskRegistry.from_file(settings.tasks_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect_redis(settings)
        queue = editor_queue(client, settings)
        metrics.queue_depth.queue = queue
        runtime = EditorRuntime(
            settings=settings,
            redis=client,
            queue=queue,
            tasks=tasks,
            metrics=metrics,
            limits=ImageLimits.from_settings(settings),
            worker=worker(queue, metrics) if worker is not None else None,
        )
        app.state.runtime = runtime
        with suppress(Exception):  # Redis may be down at start; reads recreate the group when it returns
            await queue.ensure_group()
        try:
            async with hosted_worker(runtime.worker):
                yield
        finally:
            await client.aclose()

    async def worker_readiness() -> str | None:
        hosted = app.state.runtime.worker
        return None if hosted is None else await hosted.readiness()

    readiness: list[Readiness] = [
        redis_readiness(lambda: app.state.runtime.redis, key_prefix=settings.redis_prefix),
        worker_readiness,
    ]
    app = create_service_app(
        title="ETCHR editor", settings=settings, metrics=metrics, lifespan=lifespan, readiness=readiness
    )
    app.include_router(router)
    return app
