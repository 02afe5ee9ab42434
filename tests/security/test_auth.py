"""Bearer auth on every non-probe route of every service, enumerated from the app itself.

A route added later is covered without touching this file: it must either answer 401 without the token or
be added to ``PUBLIC`` below, which is a reviewed security decision. ``/openapi.json``, ``/docs`` and
``/redoc`` are *not* public: with ``ETCHR_API_KEYS`` set they need the token like the API they describe.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.security.conftest import API_KEY, AUTH, SECOND_AUTH, Service, assert_error
from tests.support.routes import app_routes

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# Routes answered without a token, per service, on purpose. Keep this list short and say why.
PUBLIC: dict[str, frozenset[str]] = {
    "editor": PROBES,
    # The verifier's browser playground: a static page and its assets (no data); the /answer calls it
    # makes carry the token the user types in; config.json says only whether a token is needed.
    "verifier": PROBES | {"/", "/playground/config.json", "/playground/{name}"},
    "reward": PROBES,
}
WRONG_TOKENS = (
    {"authorization": "Bearer wrong-token"},
    {"authorization": f"Bearer {API_KEY}x"},  # a key's prefix or extension is no key
    {"authorization": f"Bearer {API_KEY[:-1]}"},
    {"authorization": f"Basic {API_KEY}"},  # the right secret in the wrong scheme
    {"authorization": API_KEY},
    {"x-api-key": API_KEY},
)


def concrete(path: str) -> str:
    """A path with its parameters filled in (any value: auth is decided before the route runs)."""
    return re.sub(r"\{[^}]+\}", "x", path)


def call(
    client: httpx.Client, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, concrete(path), json=body, headers=headers)


@pytest.mark.parametrize("name", ["editor", "verifier", "reward"])
def test_every_non_public_route_needs_the_token(services: dict[str, Service], name: str) -> None:
    service = services[name]
    routes = app_routes(service.app)
    # The walker must see at least what the OpenAPI schema documents, or it is missing routes.
    documented = {
        (method.upper(), path)
        for path, operations in service.app.openapi()["paths"].items()
        for method in operations
    }
    assert documented <= routes, documented - routes
    assert {("GET", "/openapi.json"), ("GET", "/docs")} <= routes
    paths = {path for _, path in routes}
    assert PUBLIC[name] <= paths, f"stale PUBLIC entries: {PUBLIC[name] - paths}"

    guarded = sorted((method, path) for method, path in routes if path not in PUBLIC[name])
    assert guarded
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for method, path in guarded:
            for headers in (None, *WRONG_TOKENS):
                response = call(client, method, path, headers)
                error = assert_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"] == "Bearer", (method, path)
                assert API_KEY not in response.text and API_KEY not in error["message"]
            allowed = call(client, method, path, AUTH)
            assert allowed.status_code != 401, (method, path, allowed.text)
            assert allowed.status_code < 500, (method, path, allowed.text)


@pytest.mark.parametrize("name", ["editor", "verifier", "reward"])
def test_public_routes_answer_without_a_token(services: dict[str, Service], name: str) -> None:
    service = services[name]
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for path in sorted(PUBLIC[name]):
            if "{" in path:
                continue  # a parameterised asset route: any unknown name is a 404, never a 401
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)


def test_schema_is_served_with_any_configured_key(services: dict[str, Service]) -> None:
    """What a client generator or schemathesis fetches; every key in ETCHR_API_KEYS works."""
    for service in services.values():
        response = httpx.get(f"{service.url}/openapi.json", headers=SECOND_AUTH, timeout=30)
        assert response.status_code == 200
        assert response.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
