"""FastAPI app factory shared by every service: error model, request ids, body limit, auth, probes, metrics.

Everything a service needs at request time hangs off ``app.state`` and is reached through the
dependencies below, so tests can run several differently configured apps in one process.
"""

from __future__ import annotations

import hmac
import logging
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
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ReadinessCheck = Callable[[], Awaitable[str | None]]


class ServiceError(Exception):
    """An error with an honest status; raised anywhere, rendered as the SPEC §5 error body."""

    def __init__(
        self, status: int, type_: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(type=type_, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


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
        incoming = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
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
            except Exception:
                logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
                if not response_started:
                    await error_response(500, "internal_error", "internal server error")(
                        scope, receive, send_with_id
                    )
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(scope["method"], route_path, status, time.perf_counter() - started)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(self.max_body_bytes)
        await error_response(413, "request_too_large", exc.detail)(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return error_response(400, "invalid_image", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "validation_error", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, type_, str(exc.detail), dict(exc.headers or {}))

    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("redis unavailable: %s", exc)
        return error_response(503, "redis_unavailable", f"Redis is unreachable: {exc}", {"Retry-After": "2"})

    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)


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
            return error_response(503, "not_ready", "; ".join(problems), {"Retry-After": "2"})
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
    """A FastAPI app with the behaviour SPEC §5 asks of every service; routers are added by the caller."""
    app = FastAPI(
        title=title,
        lifespan=lifespan,
        # Every error, 4xx and 5xx (429/502/503/504 are part of the contract), is the SPEC §5 body.
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


def redis_readiness(get_redis: Callable[[], Any]) -> ReadinessCheck:
    """A readiness check that pings Redis with a short timeout."""

    async def check() -> str | None:
        import asyncio

        try:
            await asyncio.wait_for(get_redis().ping(), timeout=1.0)
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            return f"redis unreachable: {exc or type(exc).__name__}"
        return None

    return check
