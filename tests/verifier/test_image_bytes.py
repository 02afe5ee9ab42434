"""Images cross the wire once: a client's PNG/JPEG/WebP reaches the MLLM (and the editor) as the bytes it
sent, and is re-encoded only when what a viewer shows differs from what is stored (EXIF rotation, alpha)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from etchr.imaging import ImageLimits, prepare_input
from tests.support.mllm_server import ScriptedMLLM
from tests.verifier.conftest import VerifierFactory, requests_of

QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
LIMITS = ImageLimits(max_pixels=4096 * 4096, max_bytes=32 << 20)


def photo(size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    """A picture with detail, so that a re-encoded copy could not equal the original bytes by chance."""
    image = Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def sent_bytes(data_url: str) -> tuple[str, bytes]:
    header, _, payload = data_url.partition(",")
    return header, base64.b64decode(payload)


@pytest.mark.parametrize(
    ("fmt", "mime", "options"),
    [
        ("JPEG", "image/jpeg", {"quality": 85}),
        ("PNG", "image/png", {}),
        ("WEBP", "image/webp", {"quality": 80}),
    ],
)
def test_a_valid_input_reaches_the_mllm_as_sent(
    fmt: str, mime: str, options: dict[str, object], verifier: VerifierFactory, mllm: ScriptedMLLM
) -> None:
    raw = encoded(photo(), fmt, **options)
    body = {"image": base64.b64encode(raw).decode(), "question": QUESTION, "task": "logic"}
    response = httpx.post(f"{verifier()}/answer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["used_edit"] is True

    calls = requests_of(mllm, "judge") + requests_of(mllm, "reason_edit") + requests_of(mllm, "reason_direct")
    assert requests_of(mllm, "judge") and requests_of(mllm, "reason_edit")
    for call in calls:  # the original is the first image of every call: the client's bytes, labelled right
        header, data = sent_bytes(call.images[0])
        assert header == f"data:{mime};base64" and data == raw
    # The same data URL string for the original in every call (built once per request).
    assert len({call.images[0] for call in calls}) == 1
    # The edit the judge saw is the one U reasoned with.
    assert requests_of(mllm, "judge")[0].images[1] == requests_of(mllm, "reason_edit")[0].images[1]


def test_a_rotated_jpeg_goes_on_upright_as_png() -> None:
    """A phone photo stored sideways with an EXIF orientation: the MLLM must see it as a viewer does."""
    stored = photo((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    raw = encoded(stored, "JPEG", quality=90, exif=exif.tobytes())
    image, onward = prepare_input(raw, LIMITS)
    assert image.size == (64, 96)  # upright
    assert onward.mime == "image/png" and onward.data != raw
    assert Image.open(io.BytesIO(onward.data)).size == (64, 96)


def test_alpha_is_flattened_before_it_goes_on() -> None:
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    raw = encoded(transparent, "PNG")
    image, onward = prepare_input(raw, LIMITS)
    assert onward.mime == "image/png" and onward.data != raw
    sent = Image.open(io.BytesIO(onward.data))
    assert sent.mode == "RGB" and sent.getpixel((0, 0)) == (255, 255, 255) == image.getpixel((0, 0))


def test_grey_and_plain_inputs_go_on_unchanged_and_urls_are_built_once() -> None:
    grey = encoded(photo(mode="L"), "PNG")
    image, onward = prepare_input(grey, LIMITS)
    assert onward.data is grey and onward.mime == "image/png" and image.mode == "RGB"
    assert onward.data_url is onward.data_url  # cached: one base64 per request, however many calls
