"""The editor over real HTTP: uvicorn, a real Redis, the tiny checkpoint, the official openai client."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
from PIL import Image

from etchr.settings import EditorSettings
from etchr_editor.service import create_app
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread, wait_until

if TYPE_CHECKING:
    from etchr_editor.model import LoadedEditor

QUESTION = "Which way should the robot turn at the first junction?"


def png_b64(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 7):  # some structure, so the VAE sees more than a flat colour
        for y in range(height):
            image.putpixel((x, y), (x % 255, y % 255, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def bomb_png_b64(width: int, height: int) -> str:
    """A tiny PNG whose header claims width × height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(body).decode()


def editor_settings(redis_url: str, prefix: str, model: Path | None, **overrides: object) -> EditorSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "editor_model": str(model) if model else None,
        "editor_device": "cpu",
        "editor_steps": 2,
        "editor_max_batch": 4,
        "editor_deadline_s": 60,
        "max_body_bytes": 2 * 1024 * 1024,
        "max_image_pixels": 512 * 512,
        "editor_max_n": 4,
        **overrides,
    }
    return EditorSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def editor(redis_server: RedisServer, tiny_editor_dir: Path) -> Iterator[str]:
    """An editor front with its in-process worker on the tiny checkpoint."""
    settings = editor_settings(redis_server.url, "api-main", tiny_editor_dir)
    server = UvicornThread(create_app(settings)).start()
    yield server.url
    server.stop()


@pytest.fixture
def client(editor: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=editor, timeout=60) as http:
        yield http


def edit_body(**overrides: object) -> dict[str, object]:
    return {"image": png_b64(72, 50), "question": QUESTION, "task": "logic", "seed": 7, **overrides}


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if type_ is not None:
        assert error["type"] == type_
    assert response.headers["x-request-id"]
    return error


def test_edit_returns_images_at_the_input_size(client: httpx.Client) -> None:
    response = client.post("/edit", json=edit_body(n=2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "logic"
    assert QUESTION in body["prompt"] and len(body["prompt"]) > len(QUESTION)
    assert len(body["images"]) == 2 and body["seeds"] == [7, 8]
    first, second = (decode(image) for image in body["images"])
    assert first.format == "PNG" and first.size == (72, 50) and second.size == (72, 50)
    assert first.tobytes() != second.tobytes(), "two rollouts with different seeds must differ"
    assert body["model"]["steps"] == 2
    timings = body["timings"]
    assert timings["total_ms"] >= timings["infer_ms"] > 0 and timings["queue_ms"] >= 0


def test_same_request_and_seed_give_the_same_images(client: httpx.Client) -> None:
    first = client.post("/edit", json=edit_body()).json()["images"]
    second = client.post("/edit", json=edit_body()).json()["images"]
    assert first == second


def test_tiny_and_huge_aspect_inputs_come_back_at_their_own_size(client: httpx.Client) -> None:
    for width, height in [(20, 12), (300, 40)]:
        response = client.post("/edit", json=edit_body(image=png_b64(width, height)))
        assert response.status_code == 200, response.text
        assert decode(response.json()["images"][0]).size == (width, height)


def test_data_url_and_jpeg_input_accepted(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="JPEG")
    data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = client.post("/edit", json=edit_body(image=data_url))
    assert response.status_code == 200, response.text


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) >= 16


def test_jobs_roundtrip_and_unknown_job(client: httpx.Client) -> None:
    accepted = client.post("/jobs", json=edit_body())
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    def done() -> bool:
        return client.get(f"/jobs/{job_id}").json()["status"] == "done"

    wait_until(done, 60, "job to finish")
    body = client.get(f"/jobs/{job_id}").json()
    assert body["result"]["id"] == job_id and len(body["result"]["images"]) == 1
    assert_error(client.get("/jobs/does-not-exist"), 404, "not_found")


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"image": "!!!not base64!!!"}, 400),
        ({"image": base64.b64encode(b"GIF89a not really").decode()}, 400),
        ({"image": base64.b64encode(b"hello world").decode()}, 400),
        ({"image": bomb_png_b64(60_000, 60_000)}, 400),
        ({"image": png_b64(600, 600)}, 400),  # over max_image_pixels = 512²
        ({"task": "astrology"}, 422),
        ({"n": 0}, 422),
        ({"n": 5}, 400),  # over ETCHR_EDITOR_MAX_N = 4
        ({"n": "three"}, 422),
        ({"steps": 0}, 422),
        ({"steps": 101}, 400),  # over ETCHR_EDITOR_MAX_STEPS
        ({"guidance_scale": -1}, 422),
        ({"seed": -5}, 422),
        ({"question": ""}, 422),
        ({"colour": "red"}, 422),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: httpx.Client, overrides: dict[str, object], status: int) -> None:
    assert_error(client.post("/edit", json=edit_body(**overrides)), status)


def test_missing_fields_and_non_json(client: httpx.Client) -> None:
    error = assert_error(client.post("/edit", json={"image": png_b64(64, 64)}), 422, "validation_error")
    assert "question" in error["message"] and "task" in error["message"]
    assert_error(
        client.post("/edit", content=b"{not json", headers={"content-type": "application/json"}), 422
    )


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = "A" * (3 * 1024 * 1024)
    assert_error(client.post("/edit", json=edit_body(image=big)), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while streaming too
        yield b'{"image": "'
        for _ in range(40):
            yield b"A" * 100_000
        yield b'"}'

    streamed = client.post("/edit", content=chunks(), headers={"content-type": "application/json"})
    assert_error(streamed, 413, "request_too_large")


def test_openai_client_images_edit(editor: str) -> None:
    client = openai.OpenAI(base_url=f"{editor}/v1", api_key="unused", max_retries=0)
    png = base64.b64decode(png_b64(80, 48))
    result = client.images.edit(
        image=("maze.png", png, "image/png"),
        prompt=QUESTION,
        model="etchr-logic",
        n=2,
        response_format="b64_json",
    )
    assert len(result.data) == 2
    for item in result.data:
        assert item.b64_json is not None and decode(item.b64_json).size == (80, 48)
    resized = client.images.edit(image=("maze.png", png, "image/png"), prompt=QUESTION, size="128x64")
    assert resized.data[0].b64_json is not None and decode(resized.data[0].b64_json).size == (128, 64)
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.images.edit(image=("maze.png", png, "image/png"), prompt=QUESTION, model="dall-e-2")
    with pytest.raises(openai.BadRequestError):
        client.images.edit(image=("maze.txt", b"not an image", "text/plain"), prompt=QUESTION)


def test_probes_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/edit", json=edit_body())
    metrics = client.get("/metrics").text
    for name in (
        "etchr_editor_edits_total",
        "etchr_editor_batch_rows_bucket",
        "etchr_editor_queue_wait_seconds_bucket",
        "etchr_editor_infer_seconds_bucket",
        "etchr_editor_queue_waiting",
        'etchr_http_requests_total{method="POST",route="/edit",service="editor",status="200"}',
    ):
        assert name in metrics, name
    edits = next(line for line in metrics.splitlines() if line.startswith("etchr_editor_edits_total "))
    assert float(edits.split()[1]) >= 1


@pytest.fixture
def front_only(redis_server: RedisServer, key_prefix: str) -> Iterator[UvicornThread]:
    """A front without a worker: jobs wait in the queue, so queue limits and deadlines can be hit."""
    settings = editor_settings(
        redis_server.url, key_prefix, None, editor_worker=False, editor_queue_max=2, editor_deadline_s=0.5
    )
    server = UvicornThread(create_app(settings)).start()
    yield server
    server.stop()


def test_full_queue_answers_429_with_retry_after(front_only: UvicornThread) -> None:
    with httpx.Client(base_url=front_only.url, timeout=30) as http:
        for _ in range(2):
            assert http.post("/jobs", json=edit_body()).status_code == 202
        response = http.post("/jobs", json=edit_body())
        assert_error(response, 429, "queue_full")
        assert int(response.headers["retry-after"]) > 0


def test_deadline_gives_504_and_the_job_stays_pollable(front_only: UvicornThread) -> None:
    with httpx.Client(base_url=front_only.url, timeout=30) as http:
        error = assert_error(http.post("/edit", json=edit_body()), 504, "deadline_exceeded")
        job_id = error["message"].split()[1]
        assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"


def test_auth_guards_everything_but_probes(redis_server: RedisServer, key_prefix: str) -> None:
    settings = editor_settings(redis_server.url, key_prefix, None, editor_worker=False, api_keys=["k1", "k2"])
    server = UvicornThread(create_app(settings)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert_error(http.post("/jobs", json=edit_body()), 401, "unauthorized")
            wrong = http.post("/jobs", json=edit_body(), headers={"authorization": "Bearer nope"})
            assert_error(wrong, 401, "unauthorized")
            assert_error(http.get("/jobs/x", headers={"authorization": "Basic k1"}), 401)
            ok = http.post("/jobs", json=edit_body(), headers={"authorization": "Bearer k2"})
            assert ok.status_code == 202, ok.text
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert http.get(probe).status_code == 200
    finally:
        server.stop()


def test_redis_down_gives_503_and_the_front_recovers_by_itself(key_prefix: str) -> None:
    own_redis = RedisServer().start()
    settings = editor_settings(own_redis.url, key_prefix, None, editor_worker=False)
    server = UvicornThread(create_app(settings)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post("/jobs", json=edit_body()).status_code == 202
            own_redis.stop()
            down = http.post("/jobs", json=edit_body())
            assert_error(down, 503, "redis_unavailable")
            assert int(down.headers["retry-after"]) > 0
            assert_error(http.get("/readyz"), 503, "not_ready")
            assert http.get("/healthz").status_code == 200
            own_redis.start()
            wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness after Redis returned")
            assert http.post("/jobs", json=edit_body()).status_code == 202
    finally:
        server.stop()
        own_redis.stop()


def test_in_process_worker_recovers_after_a_redis_restart(key_prefix: str, tiny_editor_dir: Path) -> None:
    own_redis = RedisServer().start()
    server = UvicornThread(create_app(editor_settings(own_redis.url, key_prefix, tiny_editor_dir))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.post("/edit", json=edit_body()).status_code == 200
            own_redis.stop()
            assert_error(http.post("/edit", json=edit_body()), 503, "redis_unavailable")
            own_redis.start()  # an empty Redis: the stream and the consumer group are gone
            wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness after Redis returned")
            response = http.post("/edit", json=edit_body())
            assert response.status_code == 200, response.text
            assert len(response.json()["images"]) == 1
    finally:
        server.stop()
        own_redis.stop()


def test_in_process_worker_serves_a_pipeline_it_was_given(
    redis_server: RedisServer, key_prefix: str, tiny_editor: LoadedEditor
) -> None:
    """Embedding: no ETCHR_EDITOR_MODEL, the worker serves the pipeline object passed to create_app."""
    settings = editor_settings(redis_server.url, key_prefix, None)
    server = UvicornThread(create_app(settings, editor=tiny_editor)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = http.post("/edit", json=edit_body(n=2))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["name"] == tiny_editor.info["name"]
            assert [decode(image).size for image in body["images"]] == [(72, 50), (72, 50)]
    finally:
        server.stop()


def test_a_given_pipeline_needs_the_in_process_worker(
    redis_server: RedisServer, key_prefix: str, tiny_editor: LoadedEditor
) -> None:
    settings = editor_settings(redis_server.url, key_prefix, None, editor_worker=False)
    with pytest.raises(ValueError, match="ETCHR_EDITOR_WORKER is off"):
        create_app(settings, editor=tiny_editor)
