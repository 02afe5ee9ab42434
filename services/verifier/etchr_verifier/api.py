"""The verifier HTTP API: ``POST /answer`` and an OpenAI chat-completions facade over EVR."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import get_args

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from etchr.http import ServiceError, error_response, require_api_key
from etchr.http import create_app as create_service_app
from etchr.imaging import ImageLimits, decode_base64_image
from etchr.mllm import MLLMClient, MLLMNotConfigured, MLLMRejected, MLLMUnavailable
from etchr.prompts import AnswerPrompts
from etchr.protocol.answer import (
    AnswerMode,
    AnswerRequest,
    AnswerResponse,
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from etchr.redis_client import connect_redis
from etchr.settings import VerifierSettings
from etchr.tasks import TASK_IDS, TaskRegistry
from etchr_verifier.editor_client import EditorClient
from etchr_verifier.evr import EVRPipeline
from etchr_verifier.metrics import VerifierMetrics
from etchr_verifier.routing import NONE, TaskRouter

logger = logging.getLogger("etchr.verifier.api")

FACADE_MODEL = "etchr"


def get_pipeline(request: Request) -> EVRPipeline:
    return request.app.state.pipeline


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


async def run_evr(request: Request, body: AnswerRequest, pipeline: EVRPipeline) -> AnswerResponse:
    settings: VerifierSettings = request.app.state.settings
    image = await run_in_threadpool(decode_base64_image, body.image, ImageLimits.from_settings(settings))
    return await pipeline.answer(body, image, request_id=_request_id(request))


router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/answer", response_model=AnswerResponse)
async def answer(
    body: AnswerRequest, request: Request, pipeline: EVRPipeline = Depends(get_pipeline)
) -> AnswerResponse:
    """Answer a visual question with Edit-Verify-Reason (or ``edit`` / ``direct``)."""
    return await run_evr(request, body, pipeline)


def _facade_task(model: str) -> str:
    """``etchr`` (or any non-ETCHR model name) routes automatically; ``etchr-<task>`` pins the task."""
    if not model.startswith(f"{FACADE_MODEL}-"):
        return "auto"
    task = model.removeprefix(f"{FACADE_MODEL}-")
    if task in (*TASK_IDS, NONE, "auto"):
        return task
    valid = ", ".join([FACADE_MODEL, *(f"{FACADE_MODEL}-{t}" for t in (*TASK_IDS, NONE))])
    raise ServiceError(400, "invalid_field", f"unknown model {model!r}; use one of: {valid}")


def _question_and_image(body: ChatCompletionRequest) -> tuple[str, str]:
    """The last user message's text and its one image (a data URL: the service fetches no remote URLs)."""
    user = next((message for message in reversed(body.messages) if message.role == "user"), None)
    if user is None or user.content is None:
        raise ServiceError(
            400, "invalid_field", "messages must contain a user message with a question and an image"
        )
    if isinstance(user.content, str):
        raise ServiceError(
            400, "invalid_field", "the user message has no image: send an image_url content part"
        )
    texts = [part.text for part in user.content if part.type == "text" and part.text]
    images = [
        part.image_url.get("url", "") for part in user.content if part.type == "image_url" and part.image_url
    ]
    if len(images) != 1:
        raise ServiceError(400, "invalid_field", f"send exactly one image_url part (got {len(images)})")
    if not images[0].startswith("data:"):
        raise ServiceError(
            400, "invalid_field", "image_url must be a data: URL (base64); remote URLs are not fetched"
        )
    question = "\n".join(texts).strip()
    if not question:
        raise ServiceError(400, "invalid_field", "the user message has no question text")
    return question, images[0]


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, pipeline: EVRPipeline = Depends(get_pipeline)
) -> ChatCompletionResponse:
    """OpenAI-compatible: a chat with one image and a question runs EVR, returned as a chat completion."""
    if body.stream:
        raise ServiceError(400, "invalid_field", "stream=true is not supported; send stream=false")
    question, image = _question_and_image(body)
    try:
        evr = AnswerRequest(image=image, question=question, task=_facade_task(body.model))  # type: ignore[arg-type]
    except ValidationError as exc:  # e.g. text parts together over the question limit: the caller's error
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ServiceError(422, "validation_error", problems) from None
    result = await run_evr(request, evr, pipeline)
    return ChatCompletionResponse(
        id=f"chatcmpl-{_request_id(request)}",
        model=body.model,
        choices=[ChatCompletionChoice(message=ChatCompletionMessage(content=result.raw_answer))],
        etchr=result,
    )


PLAYGROUND_DIR = Path(__file__).parent / "playground"
PLAYGROUND_FILES = frozenset(path.name for path in PLAYGROUND_DIR.iterdir() if path.is_file())
# The page may load nothing but this service's own files (and the images it builds as data: URLs).
PLAYGROUND_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

# Public on purpose: the page holds no data; the /answer calls it makes carry the bearer token.
playground = APIRouter(include_in_schema=False)


@playground.get("/")
async def playground_page() -> FileResponse:
    """The playground: try /answer from a browser (docs/playground.md)."""
    return FileResponse(PLAYGROUND_DIR / "index.html", headers=PLAYGROUND_HEADERS)


@playground.get("/playground/config.json")
async def playground_config(request: Request) -> dict[str, object]:
    """What the page must know before the first call: whether to ask for a token, and the choices."""
    settings: VerifierSettings = request.app.state.settings
    return {
        "auth_required": bool(settings.api_keys),
        "tasks": ["auto", *TASK_IDS, NONE],
        "modes": list(get_args(AnswerMode)),
    }


@playground.get("/playground/{name}")
async def playground_asset(name: str) -> FileResponse:
    """The page's script and style sheet: only files shipped in the package, by exact name."""
    if name not in PLAYGROUND_FILES:
        raise ServiceError(404, "not_found", f"no playground file {name!r}")
    return FileResponse(PLAYGROUND_DIR / name, headers=PLAYGROUND_HEADERS)


def _install_mllm_errors(app: FastAPI) -> None:
    @app.exception_handler(MLLMUnavailable)
    async def _unavailable(_: Request, exc: MLLMUnavailable) -> JSONResponse:
        return error_response(503, "mllm_unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(MLLMNotConfigured)
    async def _not_configured(_: Request, exc: MLLMNotConfigured) -> JSONResponse:
        return error_response(503, "mllm_not_configured", str(exc), {"Retry-After": "60"})

    @app.exception_handler(MLLMRejected)
    async def _rejected(_: Request, exc: MLLMRejected) -> JSONResponse:
        return error_response(502, "mllm_rejected", str(exc))


def create_app(settings: VerifierSettings | None = None) -> FastAPI:
    settings = settings or VerifierSettings()
    metrics = VerifierMetrics()
    tasks = TaskRegistry.from_file(settings.tasks_file)
    prompts = AnswerPrompts.from_file(settings.prompts_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect_redis(settings)
        mllm, judge = MLLMClient.pair_from_settings(settings)
        editor = EditorClient(
            settings.editor_url, timeout_s=settings.verifier_edit_timeout_s, api_key=settings.editor_api_key
        )
        if not mllm.configured:
            logger.warning("no MLLM configured: set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL")
        router_ = TaskRouter(
            mllm,
            tasks,
            prompts,
            metrics,
            redis=client,
            key_prefix=settings.redis_prefix,
            ttl_s=settings.verifier_route_cache_ttl_s,
        )
        app.state.mllm = mllm
        app.state.pipeline = EVRPipeline(
            mllm=mllm,
            judge=judge,
            editor=editor,
            router=router_,
            tasks=tasks,
            prompts=prompts,
            metrics=metrics,
            speculative=settings.verifier_speculative,
            max_tokens=settings.verifier_max_tokens,
            temperature=settings.verifier_temperature,
        )
        try:
            yield
        finally:
            await editor.aclose()
            await mllm.close_pair(judge)
            await client.aclose()

    async def mllm_readiness() -> str | None:
        mllm: MLLMClient = app.state.mllm
        if not mllm.configured:
            return "no MLLM configured: set ETCHR_MLLM_BASE_URL and ETCHR_MLLM_MODEL"
        return None

    app = create_service_app(
        title="ETCHR verifier",
        settings=settings,
        metrics=metrics,
        lifespan=lifespan,
        readiness=[mllm_readiness],
    )
    _install_mllm_errors(app)
    app.include_router(router)
    app.include_router(playground)
    return app
