"""Verifier payloads: ``POST /answer`` and the OpenAI chat-completions facade."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class Verification(BaseModel):
    reliable: bool
    raw: str = Field(description="the judge's raw reply; unparseable counts as not reliable")


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
    timings: dict[str, float]
    mllm_calls: int


class ChatContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=MAX_KEYWORD_CHARS)
    text: str | None = Field(default=None, max_length=MAX_CHAT_TEXT_CHARS)
    image_url: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(max_length=MAX_KEYWORD_CHARS)
    content: (
        Annotated[str, Field(max_length=MAX_CHAT_TEXT_CHARS)]
        | Annotated[list[ChatContentPart], Field(max_length=MAX_CHAT_PARTS)]
        | None
    ) = None


class ChatCompletionRequest(BaseModel):
    """OpenAI chat-completions request; sampling fields are accepted, the verifier's settings apply."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=MAX_NAME_CHARS)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    stream: bool = False


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop"] = "stop"


class ChatCompletionUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionResponse(BaseModel):
    """An OpenAI ``chat.completion``; ``etchr`` carries what EVR did (clients may ignore it)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: ChatCompletionUsage = Field(default_factory=ChatCompletionUsage)
    etchr: AnswerResponse
