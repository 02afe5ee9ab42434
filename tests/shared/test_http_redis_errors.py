"""Any Redis error a route lets escape is a 503 with Retry-After and the one error body, over real HTTP.

The errors are the ones redis-py raises for what a real server answers (see the Redis fault tests in
tests/editor and tests/reward for the same against a real redis-server at maxmemory).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis.exceptions
from fastapi import APIRouter

from etchr.http import create_app
from etchr.metrics import ServiceMetrics
from etchr.settings import CommonSettings
from tests.support.servers import UvicornThread

ERRORS: dict[str, tuple[redis.exceptions.RedisError, str, str]] = {
    "oom": (
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        "5",
        "out of memory",
    ),
    "readonly": (
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        "5",
        "read only",
    ),
    "misconf": (
        redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots, but cannot"),
        "5",
        "MISCONF",
    ),
    "down": (redis.exceptions.ConnectionError("Error 111 connecting to redis:6379."), "2", "unreachable"),
    "slow": (redis.exceptions.TimeoutError("Timeout reading from socket"), "2", "unreachable"),
}


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    app = create_app(title="redis errors test", settings=CommonSettings(), metrics=ServiceMetrics("test"))
    router = APIRouter()

    @router.post("/raise/{name}")
    async def raise_error(name: str) -> None:
        raise ERRORS[name][0]

    @router.post("/grouped/{name}")
    async def raise_grouped(name: str) -> None:
        raise ExceptionGroup("task group", [ValueError("unrelated"), ERRORS[name][0]])

    app.include_router(router)
    server = UvicornThread(app).start()
    yield server.url
    server.stop()


@pytest.mark.parametrize("route", ["raise", "grouped"])
@pytest.mark.parametrize("name", list(ERRORS))
def test_any_redis_error_is_a_503_with_retry_after(service: str, route: str, name: str) -> None:
    _, retry_after, mentioned = ERRORS[name]
    response = httpx.post(f"{service}/{route}/{name}", headers={"x-request-id": f"{route}-{name}"})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == retry_after
    assert response.headers["x-request-id"] == f"{route}-{name}"
    error = response.json()["error"]
    assert error["type"] == "redis_unavailable"
    assert mentioned in error["message"], error
