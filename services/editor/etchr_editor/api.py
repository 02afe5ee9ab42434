"""The editor's HTTP front: validates and enqueues edits, waits for results.

It imports neither torch nor diffusers (it speaks to workers only through ``etchr_editor.jobs``), so the
front runs from the slim image on many replicas. ``etchr_editor.service`` adds the in-process worker.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from etchr.http import ServiceError, redis_readiness, require_api_key
from etchr.http import create_app as create_service_app
from etchr.imaging import ImageLimits, decode_base64_image, decode_image_bytes, to_model_size
from etchr.protocol import MAX_KEYWORD_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS
from etchr.protocol.edit import (
    EditRequest,
    EditResponse,
    EditTask,
    EditTimings,
    JobAccepted,
    JobStatusResponse,
    OpenAIImage,
    OpenAIImagesResponse,
    OutputFormat,
)
from etchr.queue import JobQueue, JobRecord, JobStatus, QueueFull
from etchr.redis_client import connect_redis
from etchr.settings import EditorSettings
from etchr.tasks import TASK_IDS, TaskRegistry
from etchr.workers import QueueWorker, Readiness, hosted_worker
from etchr_editor.jobs import EditJob, EditResult, editor_queue, job_fields, job_meta
from etchr_editor.metrics import EditorMetrics

logger = logging.getLogger("etchr.editor.api")

RETRY_AFTER_FULL_S = "5"


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
    if record.status is JobStatus.FAILED:
        raise ServiceError(500, "edit_failed", f"edit {job.id} failed: {record.error}")
    return build_response(record, finished_ms=_now_ms())


router = APIRouter(dependencies=[Depends(require_api_key)])


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


@router.get("/jobs/{job_id}", response_model=JobStatusResponse, response_model_exclude_none=True)
async def get_job(job_id: str, runtime: EditorRuntime = Depends(get_runtime)) -> JobStatusResponse:
    record = await runtime.queue.get(job_id)
    if record is None:
        raise ServiceError(404, "not_found", f"no job {job_id!r} (unknown, or its result expired)")
    response = JobStatusResponse(id=job_id, status=record.status.value, error=record.error)
    if record.status is JobStatus.DONE:
        response.result = build_response(record)
    return response


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
    """``model`` may name the task: ``etchr-logic`` or ``logic``; absent means ``perception``."""
    if model is None or model in ("", "etchr"):
        return "perception"
    name = model.removeprefix("etchr-")
    if name in TASK_IDS:
        return name  # type: ignore[return-value]
    valid = ", ".join(f"etchr-{task}" for task in TASK_IDS)
    raise ServiceError(400, "invalid_field", f"unknown model {model!r}; use one of: {valid}")


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
