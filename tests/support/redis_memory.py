"""Drive a test's own redis-server to ``maxmemory`` (``noeviction``), so every write is refused with OOM.

Only for a Redis the test started itself (``RedisServer``): filling the shared session server would break
every other test in the process.
"""

from __future__ import annotations

import itertools

import httpx
import redis

from tests.support.redis_server import RedisServer

FILLER = b"x" * 65536


def fill_until_oom(server: RedisServer) -> None:
    """Write filler keys until Redis refuses with OOM, then pin ``maxmemory`` below the memory in use.

    The pinning matters: a refused command's own buffer is freed again, which leaves memory a little under the
    limit, and a small write (a readiness probe, a lock) would still slip through. Below it, none does.
    """
    client = server.client()
    try:
        client.config_set("maxmemory-policy", "noeviction")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 4 * 1024 * 1024)
        for i in itertools.count():
            try:
                client.set(f"filler:{i}", FILLER)
            except redis.exceptions.OutOfMemoryError:
                break
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", max(1, used - 512 * 1024))
        try:
            client.set("filler:probe", b"1", px=1000)
        except redis.exceptions.OutOfMemoryError:
            return
        raise AssertionError("Redis still accepts writes after filling it to maxmemory")
    finally:
        client.close()


def lift_maxmemory(server: RedisServer) -> None:
    """Give Redis room again (no limit), as an operator raising ``maxmemory`` would."""
    client = server.client()
    try:
        client.config_set("maxmemory", 0)
    finally:
        client.close()


def assert_redis_refused(response: httpx.Response) -> dict[str, object]:
    """A 503 with ``Retry-After``, the JSON error body naming Redis, and a request id."""
    assert response.status_code == 503, (response.request.url, response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["type"] == "redis_unavailable", error
    assert "Redis" in error["message"] and "memory" in error["message"], error
    assert response.headers["x-request-id"]
    return error


def leave_headroom(server: RedisServer, headroom_bytes: int) -> None:
    """After ``fill_until_oom``: room for small writes only, as a Redis on the edge of ``maxmemory`` has.

    A command's arguments sit in Redis's memory while it runs, so one carrying more than the headroom (an
    image) is refused with OOM while the small ones before it (locks, probes) pass.
    """
    client = server.client()
    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + headroom_bytes)
    finally:
        client.close()
