"""Every route an app serves, walked from its router: what the security and docs tests cover one by one."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount, Route


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, schema or not, so a new route is covered by itself.

    Walks included routers (newer FastAPI keeps each one as a single lazy route holding the original
    router) and mounts; an unknown kind of route fails loudly rather than being skipped.
    """
    found: set[tuple[str, str]] = set()

    def walk(routes: Iterable[BaseRoute], prefix: str) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                context = getattr(route, "include_context", None)
                walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
            elif isinstance(route, Mount):
                if route.routes:
                    walk(route.routes, prefix + route.path)
                else:  # a mounted app (static files): its root stands for it
                    found.add(("GET", prefix + route.path + "/"))
            elif isinstance(route, Route):
                for method in route.methods or {"GET"}:
                    if method != "HEAD":
                        found.add((method, prefix + route.path))
            else:
                raise AssertionError(f"a route of an unknown kind the security tests do not cover: {route!r}")

    walk(app.routes, "")
    return found
