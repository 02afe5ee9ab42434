"""FastAPI app factory shared by every service: error model, request ids, body limit, auth, probes, metrics.

Everything a service needs at request time hangs off ``app.state`` and is reached through the
dependencies below, so tests can run several differently configured apps in one process.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import redis.exceptions
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from etchr.imaging import ImageError
from etchr.metrics import ServiceMetrics
from etchr.protocol.errors import ErrorBody, ErrorDetail
from etchr.settings import CommonSettings

logger = logging.getLogger("etchr.http")

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is kept only when it is visible ASCII without spaces, at most 128 characters: such an
# id is the same bytes in the header, in logs and when forwarded (the verifier sends it on to the editor).
# Anything else (non-ASCII bytes, which servers read as Latin-1, spaces, overlong ids) is replaced.
SAFE_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
# Where asking again cannot help (a missing setting, a refusal): OpenAI SDKs retry every 5xx unless told.
NO_RETRY_HEADERS = {"x-should-retry": "false"}
RETRY_AFTER_REDIS_DOWN_S = "2"  # a restart or failover: back in seconds
RETRY_AFTER_REDIS_REFUSING_S = "5"  # out of memory, read-only replica: needs an operator or a drained queue
REDIS_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ReadinessCheck = Callable[[], Awaitable[str | None]]


class ServiceError(Exception):
    """An error with an honest status; raised anywhere, rendered as the one error body (docs/api.md)."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}
        self.param = param


def error_response(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None, *, param: str | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(type=type_, message=message, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def request_id_for(incoming: bytes | None) -> str:
    """The client's ``x-request-id`` when it is safe (``SAFE_REQUEST_ID``), else a fresh uuid4 hex."""
    if incoming is not None and SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming.decode("ascii")
    return uuid.uuid4().hex


def redis_error_response(exc: redis.exceptions.RedisError) -> JSONResponse:
    """Any Redis error as a 503 with ``Retry-After``: unreachable, out of memory, read-only, anything else.

    Nothing the client sent makes Redis fail, so it is never the client's error, and a retry later succeeds
    once Redis is back or has room again (reads go on working meanwhile: a full Redis refuses only writes).
    """
    if isinstance(exc, REDIS_UNREACHABLE):
        logger.warning("redis unavailable: %s", exc)
        message = f"Redis is unreachable: {exc}"
        retry_after = RETRY_AFTER_REDIS_DOWN_S
    else:
        logger.error("redis refused a command: %s: %s", type(exc).__name__, exc)
        cause = " (out of memory: raise maxmemory or free space)" if _out_of_memory(exc) else ""
        message = f"Redis refused the command{cause}: {exc}"
        retry_after = RETRY_AFTER_REDIS_REFUSING_S
    return error_response(503, "redis_unavailable", message, {"Retry-After": retry_after})


def _out_of_memory(exc: redis.exceptions.RedisError) -> bool:
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "maxmemory" in str(exc)


def _redis_error_in(exc: BaseException) -> redis.exceptions.RedisError | None:
    """``exc`` itself or the first Redis error inside it (an ExceptionGroup), if any."""
    if isinstance(exc, redis.exceptions.RedisError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _redis_error_in(inner)
            if found is not None:
                return found
    return None


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes (ETCHR_MAX_BODY_BYTES)")


class RequestContextMiddleware:
    """Request id on every response, body-size limit, request metrics, and a JSON 500 as last resort.

    Pure ASGI (not BaseHTTPMiddleware) so streaming bodies are counted as they arrive and nothing is buffered.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_for(headers.get(REQUEST_ID_HEADER.encode()))
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send_with_id)
        else:
            received = 0

            async def counting_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise BodyTooLarge(self.max_body_bytes)
                return message

            try:
                await self.app(scope, counting_receive, send_with_id)
            except BodyTooLarge:
                if not response_started:
                    await self._too_large(scope, receive, send_with_id)
            except Exception as exc:
                # A Redis error that got past the exception handlers (e.g. raised in a task group, wrapped in
                # an ExceptionGroup) is still a 503, never a 500.
                redis_error = _redis_error_in(exc)
                if redis_error is None:
                    logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
                elif response_started:
                    logger.warning("redis error after the response started: %s", redis_error)
                if not response_started:
                    response = (
                        error_response(500, "internal_error", "internal server error")
                        if redis_error is None
                        else redis_error_response(redis_error)
                    )
                    await response(scope, receive, send_with_id)
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(scope["method"], route_path, status, time.perf_counter() - started)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(self.max_body_bytes)
        await error_response(413, "request_too_large", exc.detail)(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.headers, param=exc.param)

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return error_response(400, "invalid_image", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems, fields = [], []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
            fields.append(where)
        # ``param`` names the first field at fault, as OpenAI's errors do (SDKs show it).
        return error_response(
            422, "validation_error", "; ".join(problems) or "invalid request", param=next(iter(fields), None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "request_too_large",
        }.get(exc.status_code, "http_error")
        return error_response(exc.status_code, type_, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_error(_: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        return redis_error_response(exc)


def get_settings(request: Request) -> CommonSettings:
    return request.app.state.settings


_bearer = HTTPBearer(auto_error=False)


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    """Bearer auth over ``ETCHR_API_KEYS``; constant-time compare; off when no keys are set."""
    keys: Sequence[str] = request.app.state.settings.api_keys
    if not keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ServiceError(
            401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    presented = credentials.credentials.encode()
    # Compare against every key so the time taken does not reveal which key (or prefix) matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key.encode())
    if not matched:
        raise ServiceError(
            401, "unauthorized", "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def _probe_router(checks: Sequence[ReadinessCheck]) -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive (no dependency is consulted)."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> Response:
        """Every dependency reachable; a list of what is not, otherwise."""
        problems = []
        for check in checks:
            try:
                problem = await check()
            except Exception as exc:  # a probe must answer, whatever the dependency does
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                problems.append(problem)
        if problems:
            return error_response(503, "not_ready", "; ".join(problems))  # probes poll anyway: no Retry-After
        return JSONResponse({"status": "ready"})

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition (every metric name starts with ``etchr_``)."""
        service_metrics: ServiceMetrics = request.app.state.metrics
        try:
            await service_metrics.refresh()
        except Exception as exc:  # stale gauges beat a failed scrape
            logger.warning("metrics refresh failed: %s", exc)
        body, content_type = service_metrics.render()
        return Response(body, media_type=content_type)

    return router


def _docs_router(title: str) -> APIRouter:
    """The OpenAPI schema and its viewers, behind the bearer token like every non-probe endpoint.

    FastAPI's own ``/openapi.json``, ``/docs`` and ``/redoc`` are plain routes no dependency reaches; these
    replace them so that with ``ETCHR_API_KEYS`` set the API surface is not readable without a token
    (``curl -H "Authorization: Bearer $KEY" .../openapi.json``). With auth off they are open, as before.
    """
    router = APIRouter(include_in_schema=False, dependencies=[Depends(require_api_key)])

    @router.get("/openapi.json")
    async def openapi_schema(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title} - Swagger UI")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{title} - ReDoc")

    return router


def create_app(
    *,
    title: str,
    settings: CommonSettings,
    metrics: ServiceMetrics,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    readiness: Sequence[ReadinessCheck] = (),
) -> FastAPI:
    """A FastAPI app that behaves as docs/api.md promises of every service; the caller adds routers."""
    app = FastAPI(
        title=title,
        lifespan=lifespan,
        # Every error, 4xx and 5xx (429/502/503/504 are part of the contract), is the one error body.
        responses={"4XX": {"model": ErrorBody}, "5XX": {"model": ErrorBody}},
        # Served by _docs_router instead, behind the bearer token.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    if not settings.api_keys:
        logger.warning("%s: ETCHR_API_KEYS is empty, authentication is OFF", title)
    _install_error_handlers(app)
    app.include_router(_probe_router(readiness))
    app.include_router(_docs_router(title))
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    return app


def redis_readiness(get_redis: Callable[[], Any], *, key_prefix: str = "etchr") -> ReadinessCheck:
    """Ready when Redis accepts a write: one tiny ``SET {key_prefix}:readyz`` that expires in 10 s.

    A PING would answer while Redis refuses every write (at ``maxmemory`` with ``noeviction``, a read-only
    replica, a failed snapshot with ``stop-writes-on-bgsave-error``), and every request would then fail.
    """
    probe_key = f"{key_prefix}:readyz"

    async def check() -> str | None:
        try:
            await asyncio.wait_for(get_redis().set(probe_key, b"1", px=10_000), timeout=1.0)
        except (TimeoutError, OSError, *REDIS_UNREACHABLE) as exc:
            return f"redis unreachable: {exc or type(exc).__name__}"
        except redis.exceptions.RedisError as exc:
            cause = "out of memory, " if _out_of_memory(exc) else ""
            return f"redis refuses writes ({cause}{type(exc).__name__}): {exc}"
        return None

    return check
