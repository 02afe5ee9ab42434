"""Security fixtures: the three services with auth on, over real HTTP, sharing one throwaway Redis.

The editor runs the tiny checkpoint with an in-process worker; the verifier calls it over HTTP; the
verifier and reward service call the scripted test MLLM (the only stand-in). Limits are set low so the
over-limit cases stay cheap: a 1 MiB body, 256² pixels.
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from etchr.settings import EditorSettings, RewardSettings, VerifierSettings
from etchr.tasks import JUDGE_REPLY_CONVENTION
from etchr_editor.service import create_app as create_editor_app
from etchr_reward.api import create_app as create_reward_app
from etchr_verifier.api import create_app as create_verifier_app
from tests.support.mllm_server import RecordedRequest, ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread

API_KEY = "sec-test-key-0123456789"
AUTH = {"authorization": f"Bearer {API_KEY}"}
SECOND_KEY = "sec-second-key-9876543210"
SECOND_AUTH = {"authorization": f"Bearer {SECOND_KEY}"}
MAX_BODY_BYTES = 1024 * 1024
MAX_IMAGE_PIXELS = 256 * 256
JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it
ROUTE_MARK = "Reply with exactly one word from"


def png_bytes(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_b64(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    return base64.b64encode(png_bytes(width, height, colour)).decode()


def bomb_png_bytes(width: int = 60_000, height: int = 60_000) -> bytes:
    """A ~100-byte PNG whose header claims width × height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, str]:
    """The error body (docs/api.md) with ``status`` (and ``type_``), and the request id header."""
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    if type_ is not None:
        assert error["type"] == type_, error
    assert response.headers["x-request-id"]
    return error


def mllm_responder(request: RecordedRequest) -> str:
    """Judges say yes, routing picks logic, reasoning answers B."""
    if JUDGE_MARK in request.text:
        return "1"
    if ROUTE_MARK in request.text:
        return "logic"
    return "Following the path, the exit is B.\n\\boxed{B}"


@dataclass
class Service:
    name: str
    url: str
    app: FastAPI


@pytest.fixture(scope="session")
def security_mllm() -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(mllm_responder).start()
    yield server
    server.stop()


def _serve(app: FastAPI, *, wait_ready: bool = True) -> UvicornThread:
    return UvicornThread(app).start(wait_ready=wait_ready, timeout=120)


def _limits() -> dict[str, object]:
    return {
        "api_keys": [API_KEY, SECOND_KEY],
        "max_body_bytes": MAX_BODY_BYTES,
        "max_image_pixels": MAX_IMAGE_PIXELS,
    }


@pytest.fixture(scope="session")
def editor_service(redis_server: RedisServer, tiny_editor_dir: Path) -> Iterator[Service]:
    """The editor on the tiny checkpoint; n and steps are capped so no generated request runs long."""
    settings = EditorSettings(
        redis_url=redis_server.url,
        redis_prefix=f"sec-editor-{uuid.uuid4().hex[:8]}",
        editor_model=str(tiny_editor_dir),
        editor_device="cpu",
        editor_steps=2,
        editor_max_n=2,
        editor_max_steps=4,
        editor_deadline_s=60,
        **_limits(),  # type: ignore[arg-type]
    )
    app = create_editor_app(settings)
    server = _serve(app)
    yield Service("editor", server.url, app)
    server.stop()


@pytest.fixture(scope="session")
def verifier_service(
    redis_server: RedisServer, editor_service: Service, security_mllm: ScriptedMLLM
) -> Iterator[Service]:
    settings = VerifierSettings(
        redis_url=redis_server.url,
        redis_prefix=f"sec-verifier-{uuid.uuid4().hex[:8]}",
        editor_url=editor_service.url,
        editor_api_key=API_KEY,
        mllm_base_url=[security_mllm.base_url],
        mllm_model="test-vlm",
        mllm_max_retries=0,
        **_limits(),  # type: ignore[arg-type]
    )
    app = create_verifier_app(settings)
    server = _serve(app)
    yield Service("verifier", server.url, app)
    server.stop()


@pytest.fixture(scope="session")
def reward_service(redis_server: RedisServer, security_mllm: ScriptedMLLM) -> Iterator[Service]:
    settings = RewardSettings(
        redis_url=redis_server.url,
        redis_prefix=f"sec-reward-{uuid.uuid4().hex[:8]}",
        mllm_base_url=[security_mllm.base_url],
        mllm_model="test-vlm",
        mllm_max_retries=0,
        reward_deadline_s=30,
        **_limits(),  # type: ignore[arg-type]
    )
    app = create_reward_app(settings)
    server = _serve(app)
    yield Service("reward", server.url, app)
    server.stop()


@pytest.fixture(scope="session")
def services(
    editor_service: Service, verifier_service: Service, reward_service: Service
) -> dict[str, Service]:
    return {service.name: service for service in (editor_service, verifier_service, reward_service)}


class RecordingHTTPServer:
    """A real local HTTP server that answers every GET with a PNG and records each hit.

    Stands where an attacker's URL would point: if any service fetched a client-supplied URL (http or
    https), it would show up in ``connections`` (and, for plain http, in ``hits``).
    """

    def __init__(self) -> None:
        self.hits: list[str] = []  # request paths
        self.connections: list[str] = []  # every TCP connection, even one that never sent a valid request
        hits, connections, body = self.hits, self.connections, png_bytes()

        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:  # a TLS handshake (https:// to this port) is a connection, not a GET
                connections.append(str(self.client_address))
                super().handle()

            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RecordingHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bait_server() -> Iterator[RecordingHTTPServer]:
    with RecordingHTTPServer() as server:
        assert httpx.get(f"{server.url}/self-check.png").status_code == 200  # it does record real hits
        assert server.connections
        server.hits.clear()
        server.connections.clear()
        yield server
