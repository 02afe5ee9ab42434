"""The editor's queue contract: its stream, what a job and its result carry, and how a job is read back.

The HTTP front (``api``) writes jobs and reads results; GPU workers (``worker``) do the opposite. Both
import this module and not each other, so the front stays free of torch and a change to the job format
is one change here (docs/operations.md: rolling upgrades).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from PIL import Image
from pydantic import BaseModel, Field

from etchr.protocol.edit import EditTask, OutputFormat
from etchr.queue import Delivery, JobQueue
from etchr.settings import EditorSettings

QUEUE_NAME = "editor"

# Job-failure reasons a worker stores (``GET /jobs/{id}`` shows them as ``error``).
MALFORMED_JOB = "malformed job"
EDITOR_FAILED = "editor failed"


class EditJob(BaseModel):
    """What the front puts on the stream; the model-size pixels travel beside it as raw RGB bytes."""

    id: str
    task: EditTask
    prompt: str
    seeds: list[int]
    steps: int
    guidance_scale: float
    image_size: tuple[int, int] = Field(
        description="(w, h) of the model-size RGB pixels carried beside the job"
    )
    output_size: tuple[int, int] = Field(
        description="(w, h) results are scaled back to: the input's own size"
    )
    enqueued_ms: int
    # Defaults keep jobs enqueued by a front that predates output formats decodable (rolling upgrades).
    output_format: OutputFormat = "png"
    output_compression: int | None = None


class EditResult(BaseModel):
    """What a worker stores for a finished job."""

    images: list[str]
    seeds: list[int]
    model: dict[str, object]
    started_ms: int
    infer_ms: float
    batch_rows: int


def editor_queue(client: aioredis.Redis, settings: EditorSettings) -> JobQueue:
    """The editor's stream, ``{ETCHR_REDIS_PREFIX}:editor``, configured from the settings."""
    return JobQueue.for_service(client, settings, QUEUE_NAME)


def job_fields(job: EditJob, pixels: Image.Image) -> dict[str, bytes | str]:
    """The stream entry of ``job``: its JSON, and ``pixels`` (model-size RGB) as raw bytes, not base64."""
    if pixels.mode != "RGB" or pixels.size != tuple(job.image_size):
        raise ValueError(f"pixels must be RGB at the job's image_size {job.image_size}")
    return {"job": job.model_dump_json(), "pixels": pixels.tobytes()}


def job_meta(job: EditJob) -> dict[str, str]:
    """What the job record keeps for the front's response once the stream entry is gone."""
    return {"task": job.task, "prompt": job.prompt}


def read_job(delivery: Delivery) -> tuple[EditJob, Image.Image]:
    """The job and its pixels from a stream entry; KeyError or ValueError when the entry is malformed."""
    job = EditJob.model_validate_json(delivery.fields["job"])
    width, height = job.image_size
    return job, Image.frombytes("RGB", (width, height), delivery.fields["pixels"])
