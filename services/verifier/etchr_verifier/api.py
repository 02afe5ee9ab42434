"""The verifier HTTP API: ``POST /answer`` and an OpenAI chat-completions facade over EVR."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import get_args

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from etchr.clients.editor import EditorClient
from etchr.http import ServiceError, error_response, require_api_key
from etchr.http import create_app as create_service_app
from etchr.imaging import ImageLimits, MLLMImage, decode_base64_bytes, prepare_input
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
from etchr_verifier.evr import EVRPipeline
from etchr_verifier.metrics import VerifierMetrics
from etchr_verifier.routing import NONE, TaskRouter

logger = logging.getLogger("etchr.verifier.api")

FACADE_MODEL = "etchr"
# The readiness probe of the editor's credentials: bounded well under a Kubernetes probe's timeout, and its
# answer reused for a few seconds so frequent /readyz calls do not each cost the editor a request.
EDITOR_PROBE_TIMEOUT_S = 1.0
EDITOR_PROBE_TTL_S = 5.0


def get_pipeline(request: Request) -> EVRPipeline:
    return request.app.state.pipeline


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


def _input_image(data: str, limits: ImageLimits) -> MLLMImage:
    """The client's image, checked, as it travels on: its own bytes when they can (docs/api.md)."""
    return prepare_input(decode_base64_bytes(data, limits), limits)[1]


async def run_evr(request: Request, body: AnswerRequest, pipeline: EVRPipeline) -> AnswerResponse:
    """The whole answer under ``ETCHR_VERIFIER_DEADLINE_S``: past it, 504, and the MLLM and editor calls still
    in flight are cancelled (a hanging MLLM would otherwise hold the request for every retry's timeout)."""
    settings: VerifierSettings = request.app.state.settings
    deadline = asyncio.timeout(settings.verifier_deadline_s)
    try:
        async with deadline:
            original = await run_in_threadpool(_input_image, body.image, ImageLimits.from_settings(settings))
            return await pipeline.answer(body, original, request_id=_request_id(request))
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ServiceError(
            504,
            "deadline_exceeded",
            f"no answer within {settings.verifier_deadline_s:g} s (ETCHR_VERIFIER_DEADLINE_S); "
            "its MLLM and editor calls were cancelled",
        ) from None


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
    """The last user message's text and its one image (a data URL: the service fetches no remote URLs).

    The request models already checked every type (a non-string url is a 422 naming it); what is left here
    are the values only this facade cares about, each a 400 naming the message.
    """
    users = [index for index, message in enumerate(body.messages) if message.role == "user"]
    content = body.messages[users[-1]].content if users else None
    if not content:
        raise ServiceError(
            400,
            "invalid_field",
            "messages must contain a user message with a question and an image",
            param="messages",
        )
    param = f"messages.{users[-1]}.content"
    texts = [part.text for part in content if part.type == "text" and part.text]
    images = [part.image_url.url for part in content if part.type == "image_url" and part.image_url]
    if len(images) != 1:
        raise ServiceError(
            400,
            "invalid_field",
            f"the user message needs exactly one image_url content part (got {len(images)})",
            param=param,
        )
    if not images[0].startswith("data:"):
        raise ServiceError(
            400,
            "invalid_field",
            "image_url must be a data: URL (base64); remote URLs are not fetched",
            param=param,
        )
    question = "\n".join(texts).strip()
    if not question:
        raise ServiceError(400, "invalid_field", "the user message has no question text", param=param)
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
        raise ServiceError(422, "validation_error", problems, param="messages") from None
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


class EditorCredentialsCheck:
    """Readiness of the editor token: not ready while the editor refuses it (401/403).

    Without it a wrong or missing ETCHR_EDITOR_API_KEY turns every evr answer into a silent fallback while
    the verifier looks healthy. An editor that is down or slow keeps the verifier ready: it answers without
    edits then, by design. One probe at a time; its answer is reused for ``ttl_s``.
    """

    def __init__(self, editor: EditorClient, *, timeout_s: float, ttl_s: float) -> None:
        self.editor = editor
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._checked_at = -math.inf
        self._problem: str | None = None

    async def __call__(self) -> str | None:
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.ttl_s:
                self._problem = await self.editor.credentials_problem(self.timeout_s)
                self._checked_at = time.monotonic()
            return self._problem


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
            max_tokens=settings.verifier_judge_max_tokens,
        )
        app.state.mllm = mllm
        app.state.editor_credentials = EditorCredentialsCheck(
            editor, timeout_s=EDITOR_PROBE_TIMEOUT_S, ttl_s=EDITOR_PROBE_TTL_S
        )
        app.state.pipeline = EVRPipeline(
            mllm=mllm,
            judge=judge,
            editor=editor,
            router=router_,
            tasks=tasks,
            prompts=prompts,
            metrics=metrics,
            speculative=settings.verifier_speculative,
            speculative_reasoning=settings.verifier_speculative_reasoning,
            max_tokens=settings.verifier_max_tokens,
            judge_max_tokens=settings.verifier_judge_max_tokens,
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

    async def editor_credentials_readiness() -> str | None:
        check: EditorCredentialsCheck = app.state.editor_credentials
        return await check()

    app = create_service_app(
        title="ETCHR verifier",
        settings=settings,
        metrics=metrics,
        lifespan=lifespan,
        readiness=[mllm_readiness, editor_credentials_readiness],
    )
    _install_mllm_errors(app)
    app.include_router(router)
    app.include_router(playground)
    return app
