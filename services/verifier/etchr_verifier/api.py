"""The verifier HTTP API: ``POST /answer`` and an OpenAI chat-completions facade over EVR."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import get_args

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from etchr.clients.editor import EditorClient
from etchr.fast_json_route import FastJsonRoute
from etchr.http import ServiceError, error_response, require_api_key
from etchr.http import create_app as create_service_app
from etchr.imaging import ImageError, ImageLimits, MLLMImage, decode_base64_bytes, prepare_input
from etchr.mllm import MLLMClient, MLLMError
from etchr.model_names import model_ids
from etchr.prompts import AnswerPrompts
from etchr.protocol.answer import (
    AnswerMode,
    AnswerRequest,
    AnswerResponse,
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
)
from etchr.redis_client import connect_redis
from etchr.settings import VerifierSettings
from etchr.tasks import TASK_IDS, TaskRegistry
from etchr_verifier.chat import edit_markdown, read_chat
from etchr_verifier.errors import as_service_error
from etchr_verifier.evr import EVRObserver, EVRPipeline
from etchr_verifier.metrics import VerifierMetrics
from etchr_verifier.routing import NONE, TaskRouter
from etchr_verifier.streaming import SSE_HEADERS, AnswerEvents, ChatChunks, stream_answer

logger = logging.getLogger("etchr.verifier.api")

# When /v1/models says the models were made: fixed, so the list is the same on every replica and call.
MODELS_CREATED = 1_767_225_600  # 2026-01-01, the paper's year
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


async def run_evr(
    request: Request,
    body: AnswerRequest,
    pipeline: EVRPipeline,
    original: MLLMImage,
    *,
    context: Sequence[dict[str, object]] = (),
    observer: EVRObserver | None = None,
) -> AnswerResponse:
    """The whole answer under ``ETCHR_VERIFIER_DEADLINE_S``: past it, 504, and the MLLM and editor calls still
    in flight are cancelled (a hanging MLLM would otherwise hold the request for every retry's timeout)."""
    settings: VerifierSettings = request.app.state.settings
    deadline = asyncio.timeout(settings.verifier_deadline_s)
    try:
        async with deadline:
            return await pipeline.answer(
                body, original, request_id=_request_id(request), context=context, observer=observer
            )
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ServiceError(
            504,
            "deadline_exceeded",
            f"no answer within {settings.verifier_deadline_s:g} s (ETCHR_VERIFIER_DEADLINE_S); "
            "its MLLM and editor calls were cancelled",
        ) from None


router = APIRouter(dependencies=[Depends(require_api_key)], route_class=FastJsonRoute)

# Streamed answers are documented in docs/api.md; the schema names the event stream as a second media type.
_STREAMED = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}


async def _checked(request: Request, image: str, pipeline: EVRPipeline, param: str) -> MLLMImage:
    """What must hold before an answer starts (and before a stream sends its 200): a usable image and a
    configured MLLM, each a plain error response otherwise; ``param`` names where the image was sent."""
    pipeline.mllm.require_configured()
    settings: VerifierSettings = request.app.state.settings
    try:
        return await run_in_threadpool(_input_image, image, ImageLimits.from_settings(settings))
    except ImageError as exc:
        raise ServiceError(400, "invalid_image", str(exc), param=param) from None


@router.post("/answer", response_model=AnswerResponse, responses=_STREAMED)  # type: ignore[arg-type]
async def answer(
    body: AnswerRequest, request: Request, pipeline: EVRPipeline = Depends(get_pipeline)
) -> AnswerResponse | Response:
    """Answer a visual question with Edit-Verify-Reason (or ``edit`` / ``direct``); ``stream`` sends its
    progress as server-sent events first (the playground's progress bar)."""
    original = await _checked(request, body.image, pipeline, "image")
    if not body.stream:
        return await run_evr(request, body, pipeline, original)
    events = AnswerEvents()
    work = stream_answer(events, lambda: run_evr(request, body, pipeline, original, observer=events))
    return EventSourceResponse(work, headers=SSE_HEADERS)


@router.get("/v1/models", response_model=ModelList)
async def list_models() -> ModelList:
    """OpenAI's model list: ``etchr`` (automatic routing), ``etchr-<task>`` and ``etchr-none`` (no edit)."""
    return ModelList(data=[ModelCard(id=name, created=MODELS_CREATED) for name in model_ids()])


@router.get("/v1/models/{model}", response_model=ModelCard)
async def retrieve_model(model: str) -> ModelCard:
    """One model of the list (``client.models.retrieve``); 404 in OpenAI's shape for any other name."""
    if model not in model_ids():
        raise ServiceError(404, "model_not_found", f"the model {model!r} does not exist", param="model")
    return ModelCard(id=model, created=MODELS_CREATED)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_STREAMED)  # type: ignore[arg-type]
async def chat_completions(
    body: ChatCompletionRequest, request: Request, pipeline: EVRPipeline = Depends(get_pipeline)
) -> ChatCompletionResponse | Response:
    """OpenAI-compatible: a chat whose most recent image and last question run EVR, returned as a chat
    completion or, with ``stream``, as ``chat.completion.chunk`` events (docs/api.md, "Chat apps")."""
    turn = read_chat(body)
    try:
        evr = AnswerRequest(
            image=turn.image,
            question=turn.question,
            task=turn.task,  # type: ignore[arg-type]
            return_images=turn.show_edit,
        )
    except ValidationError as exc:  # e.g. text parts together over the question limit: the caller's error
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ServiceError(422, "validation_error", problems, param="messages") from None
    original = await _checked(request, evr.image, pipeline, turn.image_param)
    completion_id = f"chatcmpl-{_request_id(request)}"
    if not body.stream:
        result = await run_evr(request, evr, pipeline, original, context=turn.context)
        content = result.raw_answer + (edit_markdown(result) if turn.show_edit else "")
        return ChatCompletionResponse(
            id=completion_id,
            model=body.model,
            choices=[ChatCompletionChoice(message=ChatCompletionMessage(content=content))],
            usage=result.usage,
            etchr=result,
        )
    chunks = ChatChunks(
        completion_id=completion_id,
        model=body.model,
        created=int(time.time()),
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        live_chars=pipeline.mllm.max_reply_chars // 4,
        show_edit=turn.show_edit,
    )
    work = stream_answer(
        chunks, lambda: run_evr(request, evr, pipeline, original, context=turn.context, observer=chunks)
    )
    return EventSourceResponse(work, headers=SSE_HEADERS)


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
    @app.exception_handler(MLLMError)
    async def _mllm_error(_: Request, exc: MLLMError) -> JSONResponse:
        known = as_service_error(exc) or ServiceError(502, "mllm_rejected", str(exc))
        return error_response(known.status, known.type, known.message, known.headers, param=known.param)


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
