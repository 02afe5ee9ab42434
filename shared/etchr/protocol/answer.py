"""Verifier payloads: ``POST /answer`` and the OpenAI chat-completions facade."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from etchr.protocol import (
    EXAMPLE_IMAGE,
    EXAMPLE_QUESTION,
    MAX_CHAT_MESSAGES,
    MAX_CHAT_PARTS,
    MAX_CHAT_TEXT_CHARS,
    MAX_KEYWORD_CHARS,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
)

AnswerTask = Literal["auto", "none", "perception", "chart", "logic", "jigsaw", "3d"]
AnswerMode = Literal["evr", "edit", "direct"]


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        min_length=1, description="base64 PNG/JPEG/WebP, bare or as a data: URL", examples=[EXAMPLE_IMAGE]
    )
    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=[EXAMPLE_QUESTION])
    task: AnswerTask = Field(default="auto", description="a family id, 'none' (no edit) or 'auto' (routed)")
    mode: AnswerMode = Field(
        default="evr",
        description="evr: edit, verify, reason with fallback; edit: no verification; direct: no edit",
    )
    return_images: bool = Field(default=False, description="include the edited image (base64 PNG)")
    stream: bool = Field(
        default=False,
        description="answer as server-sent events: 'progress' events (EVRProgress) while EVR runs, then one "
        "'answer' event (AnswerResponse) or one 'error' event (the error body)",
    )


class TokenUsage(BaseModel):
    """Tokens the MLLM calls behind one answer spent, as the backends reported them (OpenAI's ``usage``).

    Only calls whose replies the answer used are charged: a speculative call cancelled or thrown away is not.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


EVRStage = Literal["route", "edit", "verify", "reason"]


class EVRProgress(BaseModel):
    """One step of an answer in progress: what ``/answer`` with ``stream`` sends as 'progress' events and the
    chat facade as ``reasoning_content``. ``message`` is the sentence a person reads; the rest is for bars."""

    stage: EVRStage = Field(description="route, edit (queued, then denoising), verify, reason")
    state: Literal["started", "running", "done"]
    message: str
    task: str | None = Field(default=None, description="the family, once known")
    queue_position: int | None = Field(default=None, description="edit jobs ahead of this one, while queued")
    step: int | None = Field(default=None, description="denoising steps finished, while the edit runs")
    steps: int | None = Field(default=None, description="denoising steps in all")
    reliable: bool | None = Field(default=None, description="verify done: whether the edit is used")


VerdictCause = Literal["yes", "no", "disagree", "hedge", "none", "truncated"]


class Verification(BaseModel):
    """The judge's verdict on the edit, as read by the one verdict reader (``etchr.verdicts``)."""

    reliable: bool = Field(description="the judge clearly said the edit holds what the question needs")
    raw: str = Field(description="the judge's raw reply")
    cause: VerdictCause = Field(
        description="how the reply was read: yes, no, or why it is not reliable — leading and concluding "
        "verdicts disagree, it hedges, it has no verdict, or it was cut at max_tokens before one"
    )


class AnswerResponse(BaseModel):
    answer: str = Field(description="the final answer extracted from the model's reply")
    raw_answer: str
    used_edit: bool
    verification: Verification | None
    task: str = Field(description="the family used ('none' when no edit was asked for)")
    routed: bool = Field(description="true when the family was chosen by automatic routing (task: auto)")
    edited_image: str | None = None
    baseline_answer: str | None = Field(
        default=None, description="the answer from the original image alone, when it was computed"
    )
    fallback_reason: str | None = Field(default=None, description="why the edit was not used, if it was not")
    truncated: list[str] = Field(
        default_factory=list,
        description="stages whose MLLM reply was cut at max_tokens (route, verify, reason_edit, "
        "reason_direct); a cut judge reply with no verdict also reads as verification.cause 'truncated'",
    )
    timings: dict[str, float]
    mllm_calls: int
    usage: TokenUsage = Field(
        default_factory=TokenUsage, description="tokens of the MLLM calls the answer used, summed"
    )


class ChatImageURL(BaseModel):
    """OpenAI's ``image_url`` object; ``detail`` and other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    url: str = Field(min_length=1, description="a data: URL (base64); remote URLs are not fetched")


ChatContentPartType = Literal["text", "image_url", "refusal"]


class ChatContentPart(BaseModel):
    """One part of a message. The type says which field carries it; the schema, not the handler, checks it."""

    model_config = ConfigDict(extra="allow")

    type: ChatContentPartType = Field(description="text, image_url, or an assistant turn's refusal")
    text: str | None = Field(default=None, max_length=MAX_CHAT_TEXT_CHARS)
    image_url: ChatImageURL | None = None

    @model_validator(mode="after")
    def _has_its_field(self) -> ChatContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs a 'text' string")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs 'image_url': {'url': 'data:image/...;base64,...'}")
        return self


def _content_as_parts(content: object) -> object:
    """String content is one text part, so the handler reads a single shape (and errors name one place)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None or isinstance(content, list):
        return content
    raise PydanticCustomError("content_type", "content must be a string or a list of content parts")


ChatContent = Annotated[list[ChatContentPart], Field(max_length=MAX_CHAT_PARTS)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(max_length=MAX_KEYWORD_CHARS)
    content: Annotated[
        ChatContent | None,
        BeforeValidator(
            _content_as_parts,
            json_schema_input_type=Annotated[str, Field(max_length=MAX_CHAT_TEXT_CHARS)] | ChatContent | None,
        ),
    ] = None


class ChatStreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(default=False, description="a last chunk with empty choices and the usage")


class ChatCompletionRequest(BaseModel):
    """OpenAI chat-completions request; sampling fields are accepted, the verifier's settings apply."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=MAX_NAME_CHARS)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    stream: bool = False
    stream_options: ChatStreamOptions | None = None


class ChatCompletionMessage(BaseModel):
    """The reply message; ``refusal`` is always null (OpenAI's reference requires the field)."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    """An OpenAI ``chat.completion``; ``etchr`` carries what EVR did (clients may ignore it)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: TokenUsage = Field(default_factory=TokenUsage)
    system_fingerprint: None = None
    etchr: AnswerResponse


class ChatCompletionDelta(BaseModel):
    """What a chunk adds: the role once, EVR progress as ``reasoning_content``, the answer as ``content``."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = Field(
        default=None, description="EVR's progress, in the field vLLM's reasoning models stream thinking in"
    )


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: ChatCompletionDelta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent ``chat.completion.chunk``. ``etchr_progress`` (an extension clients may ignore) carries
    the progress of a ``reasoning_content`` delta as data; the last chunk with choices carries ``etchr``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: TokenUsage | None = None
    system_fingerprint: None = None
    etchr_progress: EVRProgress | None = None
    etchr: AnswerResponse | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``, in OpenAI's shape."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "etchr"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
