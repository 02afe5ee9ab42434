"""Editor payloads: the public HTTP surface and the job that travels through Redis."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from etchr.protocol import EXAMPLE_IMAGE, EXAMPLE_QUESTION, MAX_TEXT_CHARS

EditTask = Literal["perception", "chart", "logic", "jigsaw", "3d"]
JobState = Literal["queued", "running", "done", "failed"]
OutputFormat = Literal["png", "jpeg", "webp"]

MAX_SEED = 2**63 - 1


class EditRequest(BaseModel):
    """``POST /edit`` and ``POST /jobs``. Unset sampling fields take the service defaults."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        min_length=1, description="base64 PNG/JPEG/WebP, bare or as a data: URL", examples=[EXAMPLE_IMAGE]
    )
    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=[EXAMPLE_QUESTION])
    task: EditTask
    n: int = Field(default=1, ge=1, le=64, description="rollouts of the same input, seeds seed..seed+n-1")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED - 64)
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    output_format: OutputFormat = Field(
        default="png", description="how the edited images are encoded, as OpenAI's images API names them"
    )
    output_compression: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="jpeg/webp quality 0-100 (OpenAI's output_compression; unset: 90); ignored for png",
    )


class EditTimings(BaseModel):
    queue_ms: float
    infer_ms: float
    total_ms: float


class EditResponse(BaseModel):
    id: str
    task: EditTask
    prompt: str = Field(description="the exact text fed to the editor: meta-prompt + question")
    images: list[str] = Field(
        description="base64 images in the requested output_format (PNG by default), each the input's size"
    )
    seeds: list[int]
    model: dict[str, object]
    timings: EditTimings


class JobAccepted(BaseModel):
    id: str


class EditProgress(BaseModel):
    """Where an edit job stands: ``GET /jobs/{id}`` shows it, ``GET /jobs/{id}/events`` streams it."""

    status: JobState
    queue_position: int | None = Field(default=None, description="jobs ahead of this one, while queued")
    step: int | None = Field(
        default=None, description="denoising steps finished (0..steps), once running; N when done"
    )
    steps: int | None = Field(default=None, description="denoising steps in all (N), once running")
    cancelled: bool | None = Field(
        default=None, description="true once DELETE /jobs/{id} cancelled it (status then failed)"
    )


class JobStatusResponse(BaseModel):
    id: str
    status: JobState
    progress: EditProgress | None = None
    result: EditResponse | None = None
    error: str | None = None


class JobCancelResponse(BaseModel):
    """``DELETE /jobs/{id}``: whether this call cancelled the job, and where the job stands now."""

    id: str
    cancelled: bool
    status: JobState
    detail: str = Field(description="why it was or was not cancelled, for a person")


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    """The OpenAI Images API response shape, so ``client.images.edit`` parses it."""

    created: int
    data: list[OpenAIImage]
