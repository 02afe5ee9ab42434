"""The editor's output format (OpenAI's ``output_format``/``output_compression``) through the real app:
uvicorn, a real Redis, the in-process worker on the tiny checkpoint, the official openai client."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from etchr_editor.jobs import EditJob
from etchr_editor.service import create_app
from tests.editor.test_api import QUESTION, editor_settings, png_b64
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread, wait_until

MAGIC = {
    "png": lambda raw: raw.startswith(b"\x89PNG\r\n\x1a\n"),
    "jpeg": lambda raw: raw.startswith(b"\xff\xd8\xff"),
    "webp": lambda raw: raw[:4] == b"RIFF" and raw[8:12] == b"WEBP",
}
PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@pytest.fixture(scope="module")
def editor(redis_server: RedisServer, tiny_editor_dir: Path) -> Iterator[str]:
    server = UvicornThread(
        create_app(editor_settings(redis_server.url, "output-format", tiny_editor_dir))
    ).start()
    yield server.url
    server.stop()


@pytest.fixture
def client(editor: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=editor, timeout=60) as http:
        yield http


def body(**overrides: object) -> dict[str, object]:
    return {"image": png_b64(72, 50), "question": QUESTION, "task": "logic", "seed": 3, **overrides}


def assert_image(b64: str, output_format: str, size: tuple[int, int]) -> bytes:
    raw = base64.b64decode(b64, validate=True)
    assert MAGIC[output_format](raw), f"{output_format}: starts {raw[:12]!r}"
    with Image.open(io.BytesIO(raw)) as image:
        assert image.format == PIL_FORMAT[output_format]
        assert image.size == size
        image.load()
    return raw


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_edit_returns_the_requested_format_at_the_input_size(
    client: httpx.Client, output_format: str
) -> None:
    response = client.post("/edit", json=body(output_format=output_format, n=2))
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2
    for image in images:
        assert_image(image, output_format, (72, 50))


def test_png_is_the_default(client: httpx.Client) -> None:
    response = client.post("/edit", json=body())
    assert response.status_code == 200, response.text
    assert_image(response.json()["images"][0], "png", (72, 50))


def test_output_compression_sets_the_lossy_quality(client: httpx.Client) -> None:
    """Same seed, same edit: a lower quality gives a smaller file; compression leaves PNG alone."""
    sizes = {}
    for quality in (5, 100):
        response = client.post("/edit", json=body(output_format="jpeg", output_compression=quality))
        assert response.status_code == 200, response.text
        sizes[quality] = len(assert_image(response.json()["images"][0], "jpeg", (72, 50)))
    assert sizes[5] < sizes[100]
    plain = client.post("/edit", json=body()).json()["images"]
    ignored = client.post("/edit", json=body(output_compression=5)).json()["images"]
    assert plain == ignored


def test_jobs_carry_the_format(client: httpx.Client) -> None:
    accepted = client.post("/jobs", json=body(output_format="webp"))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    wait_until(
        lambda: client.get(f"/jobs/{job_id}").json()["status"] in ("done", "failed"), 60, "the job to finish"
    )
    status = client.get(f"/jobs/{job_id}").json()
    assert status["status"] == "done", status
    assert_image(status["result"]["images"][0], "webp", (72, 50))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_format", "gif"),
        ("output_format", "PNG"),
        ("output_compression", 101),
        ("output_compression", -1),
    ],
)
def test_invalid_values_are_422_naming_the_field(client: httpx.Client, field: str, value: object) -> None:
    response = client.post("/edit", json=body(**{field: value}))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert field in error["message"]


def test_openai_client_output_format(editor: str) -> None:
    client = openai.OpenAI(base_url=f"{editor}/v1", api_key="unused", max_retries=0)
    png = base64.b64decode(png_b64(80, 48))
    for output_format in ("jpeg", "webp", "png"):
        result = client.images.edit(
            image=("maze.png", png, "image/png"),
            prompt=QUESTION,
            model="etchr-logic",
            output_format=output_format,  # type: ignore[arg-type]
            output_compression=80,
        )
        assert result.data and result.data[0].b64_json is not None
        assert_image(result.data[0].b64_json, output_format, (80, 48))
    resized = client.images.edit(
        image=("maze.png", png, "image/png"), prompt=QUESTION, size="128x64", output_format="jpeg"
    )
    assert resized.data and resized.data[0].b64_json is not None
    assert_image(resized.data[0].b64_json, "jpeg", (128, 64))
    with pytest.raises(openai.UnprocessableEntityError, match="output_format"):
        client.images.edit(
            image=("maze.png", png, "image/png"),
            prompt=QUESTION,
            output_format="gif",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.UnprocessableEntityError, match="output_compression"):
        client.images.edit(image=("maze.png", png, "image/png"), prompt=QUESTION, output_compression=150)


def test_a_job_from_an_older_front_decodes_as_png() -> None:
    """Jobs enqueued before output formats existed carry no format: they still decode, as PNG."""
    legacy = (
        '{"id":"abc","task":"logic","prompt":"p","seeds":[1],"steps":2,"guidance_scale":2.0,'
        '"image_size":[64,64],"output_size":[72,50],"enqueued_ms":1}'
    )
    job = EditJob.model_validate_json(legacy)
    assert job.output_format == "png" and job.output_compression is None
