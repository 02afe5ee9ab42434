"""An ``APIRoute`` whose JSON request bodies are parsed by pydantic-core's parser instead of ``json.loads``.

FastAPI parses a body with ``json.loads`` before validating it: ~7 ms of the event loop per 5 MB of base64
images, 12 % of the reward service's main thread at 512² (docs/benchmarks.md); ``pydantic_core.from_json``
takes half that and reads what ``json.loads`` reads alike (integers of any size, NaN and Infinity, the last of
duplicate keys). orjson is not used: it is no faster on such bodies and turns integers beyond 64 bits into
floats. What pydantic-core refuses (a lone surrogate escape, invalid JSON) goes to ``json.loads``, so invalid
JSON raises its ``JSONDecodeError``, which FastAPI reports as a validation error. Custom ``Request`` and
``APIRoute`` classes are FastAPI's documented way to change how a route reads its body, so validation, error
bodies and the OpenAPI schema stay FastAPI's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute


class FastJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError:
                self._json = json.loads(body)
        return self._json


class FastJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fast_json_handler(request: Request) -> Response:
            return await handler(FastJsonRequest(request.scope, request.receive))

        return fast_json_handler
