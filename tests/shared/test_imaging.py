from __future__ import annotations

import base64
import io
import itertools
import random
import struct
import time
import zlib

import pytest
from PIL import Image, ImageFile

from etchr.imaging import (
    ImageError,
    ImageLimits,
    decode_base64_image,
    decode_image_bytes,
    encode_png,
    encode_png_base64,
    fit_model_size,
    restore_size,
    to_model_size,
)

LIMITS = ImageLimits(max_pixels=4096 * 4096, max_bytes=32 * 1024 * 1024)
MIB = 1024 * 1024

# A 38-byte lossless WebP whose header declares 9000×9000 (81 MP, under PIL's own 89 MP bomb warning, so
# only our limit stands between it and a 243 MB decode). Built once with PIL from a white 9000² image.
WEBP_9000 = bytes.fromhex("524946461e000000574542505650384c110000002f27e3c90807d0fffef7bfff8188e87f0000")


def _pattern(size: tuple[int, int] = (48, 32), mode: str = "RGB") -> Image.Image:
    """A small image whose four quadrants differ, so orientation and round trips are checkable."""
    image = Image.new("RGB", size, (255, 0, 0))
    w, h = size
    image.paste((0, 255, 0), (w // 2, 0, w, h // 2))
    image.paste((0, 0, 255), (0, h // 2, w // 2, h))
    image.paste((255, 255, 0), (w // 2, h // 2, w, h))
    return image.convert(mode)


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG declaring width×height, with almost no pixel data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    ("fmt", "media_type", "kwargs", "tol"),
    [
        ("PNG", "image/png", {}, 0),
        ("JPEG", "image/jpeg", {"quality": 95}, 12),
        ("WEBP", "image/webp", {"lossless": True}, 0),
        ("WEBP", "image/webp", {"quality": 90}, 20),
    ],
)
def test_round_trip_bare_and_data_url(fmt: str, media_type: str, kwargs: dict, tol: int) -> None:
    source = _pattern()
    raw = _encode(source, fmt, **kwargs)
    b64 = base64.b64encode(raw).decode()
    for text in (b64, f"data:{media_type};base64,{b64}", f"  DATA:{media_type.upper()};BASE64,{b64}\n"):
        image = decode_base64_image(text, LIMITS)
        assert image.mode == "RGB"
        assert image.size == source.size
        for xy in ((5, 5), (40, 5), (5, 28), (40, 28)):
            assert _close(image.getpixel(xy), source.getpixel(xy), tol), (fmt, xy)


def test_jpg_alias_and_extra_data_url_params_are_accepted() -> None:
    b64 = base64.b64encode(_encode(_pattern(), "JPEG")).decode()
    assert decode_base64_image(f"data:image/jpg;name=a.jpg;base64,{b64}", LIMITS).size == (48, 32)


def test_base64_whitespace_and_missing_padding_are_tolerated() -> None:
    b64 = base64.b64encode(_encode(_pattern((31, 17)), "PNG")).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert decode_base64_image(wrapped, LIMITS).size == (31, 17)
    assert decode_base64_image(b64.rstrip("="), LIMITS).size == (31, 17)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "not base64 at all!", "aGVsbG8*d29ybGQ=", "abcde", "data:image/png;base64,", "@@@@"],
)
def test_bad_base64_is_an_image_error(text: str) -> None:
    with pytest.raises(ImageError):
        decode_base64_image(text, LIMITS)


def test_url_safe_alphabet_is_refused_not_misread() -> None:
    b64 = base64.urlsafe_b64encode(_encode(_pattern(), "PNG") + b"\xfb\xff").decode()
    assert "-" in b64 or "_" in b64
    with pytest.raises(ImageError, match="base64"):
        decode_base64_image(b64, LIMITS)


@pytest.mark.parametrize(
    "url",
    [
        "data:image/gif;base64,R0lGODlhAQABAAAAACw=",
        "data:text/plain;base64,aGVsbG8=",
        "data:;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:image/png;base64",
    ],
)
def test_bad_data_urls(url: str) -> None:
    with pytest.raises(ImageError):
        decode_base64_image(url, LIMITS)


def test_non_string_input_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        decode_base64_image(b"abcd", LIMITS)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_other_image_formats_are_refused(fmt: str) -> None:
    raw = _encode(_pattern(), fmt)
    with pytest.raises(ImageError, match="PNG, JPEG or WebP"):
        decode_image_bytes(raw, LIMITS)
    with pytest.raises(ImageError):
        decode_base64_image(base64.b64encode(raw).decode(), LIMITS)


@pytest.mark.parametrize("raw", [b"", b"hello, world", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff" + b"\x00" * 20])
def test_text_and_garbage_are_refused(raw: bytes) -> None:
    with pytest.raises(ImageError):
        decode_image_bytes(raw, LIMITS)


def test_truncated_png_is_an_image_error() -> None:
    raw = _encode(Image.effect_noise((256, 256), 64).convert("RGB"), "PNG")
    # Cuts that lose pixel data; dropping only IEND and the final checksums still decodes (all rows there).
    for cut in (len(raw) // 2, len(raw) - 100, 60, 40):
        with pytest.raises(ImageError):
            decode_image_bytes(raw[:cut], LIMITS)


def test_truncated_jpeg_is_an_image_error() -> None:
    raw = _encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    with pytest.raises(ImageError):
        decode_image_bytes(raw[: len(raw) // 2], LIMITS)


def test_corrupt_png_data_is_an_image_error() -> None:
    raw = bytearray(_encode(Image.effect_noise((128, 128), 64).convert("RGB"), "PNG"))
    idat = raw.index(b"IDAT") + 4
    raw[idat + 10 : idat + 200] = b"\x00" * 190  # the CRC no longer matches and the zlib stream is broken
    with pytest.raises(ImageError):
        decode_image_bytes(bytes(raw), LIMITS)


def test_decompression_bomb_is_refused_quickly_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data must not be decoded for an over-limit image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    cases = [
        _png_header_only(100_000, 100_000),  # 10 GP: PIL's own bomb guard fires at open
        _png_header_only(8_000, 8_000),  # 64 MP: under PIL's guard, over ours
        WEBP_9000,
    ]
    for raw in cases:
        assert len(raw) < 200
        started = time.perf_counter()
        with pytest.raises(ImageError, match="pixels"):
            decode_image_bytes(raw, LIMITS)
        with pytest.raises(ImageError, match="pixels"):
            decode_base64_image(base64.b64encode(raw).decode(), LIMITS)
        assert time.perf_counter() - started < 1.0


def test_pil_global_limit_is_left_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        decode_image_bytes(_png_header_only(100_000, 100_000), LIMITS)
    assert before == Image.MAX_IMAGE_PIXELS


def test_too_many_pixels() -> None:
    raw = _encode(Image.new("RGB", (101, 100)), "PNG")
    limits = ImageLimits(max_pixels=100 * 100, max_bytes=MIB)
    with pytest.raises(ImageError, match=r"101×100 = 10100 pixels; the limit is 10000"):
        decode_image_bytes(raw, limits)
    assert decode_image_bytes(_encode(Image.new("RGB", (100, 100)), "PNG"), limits).size == (100, 100)


def test_too_many_bytes_raw_and_base64() -> None:
    raw = _encode(Image.effect_noise((64, 64), 64).convert("RGB"), "PNG")
    limits = ImageLimits(max_pixels=LIMITS.max_pixels, max_bytes=len(raw) - 1)
    with pytest.raises(ImageError, match="bytes"):
        decode_image_bytes(raw, limits)
    with pytest.raises(ImageError, match="bytes"):
        decode_base64_image(base64.b64encode(raw).decode(), limits)
    exact = ImageLimits(max_pixels=LIMITS.max_pixels, max_bytes=len(raw))
    assert decode_image_bytes(raw, exact).size == (64, 64)
    assert decode_base64_image(base64.b64encode(raw).decode(), exact).size == (64, 64)


def test_oversized_base64_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_b64(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("base64 must not be decoded when the string is already over the limit")

    monkeypatch.setattr(base64, "b64decode", no_b64)
    with pytest.raises(ImageError, match="bytes"):
        decode_base64_image("A" * 4000, ImageLimits(max_pixels=100, max_bytes=1000))


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ImageLimits(max_pixels=0, max_bytes=10)


def test_exif_orientation_is_honoured() -> None:
    source = _pattern((60, 40))  # landscape; red top-left, green top-right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to view"
    raw = _encode(source, "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image_bytes(raw, LIMITS)
    assert image.size == (40, 60)
    # Rotating 90° clockwise brings the stored top-left (red) to the top-right and the stored bottom-left
    # (blue) to the top-left.
    assert _close(image.getpixel((35, 5)), (255, 0, 0), 40)
    assert _close(image.getpixel((5, 5)), (0, 0, 255), 40)


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 10, 10))
    image.paste((0, 0, 255, 128), (10, 0, 20, 5))
    for fmt, kwargs in (("PNG", {}), ("WEBP", {"lossless": True})):
        decoded = decode_image_bytes(_encode(image, fmt, **kwargs), LIMITS)
        assert decoded.mode == "RGB"
        assert decoded.getpixel((2, 2)) == (255, 0, 0)
        assert decoded.getpixel((15, 8)) == (255, 255, 255)  # fully transparent -> white, not black
        assert _close(decoded.getpixel((15, 2)), (127, 127, 255), 2)  # half blue over white


def test_palette_greyscale_and_16_bit_modes() -> None:
    palette = _pattern().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert decode_image_bytes(_encode(palette, "PNG"), LIMITS).getpixel((5, 5)) == (255, 0, 0)

    transparent_palette = Image.new("P", (8, 8), 0)
    transparent_palette.putpalette([0, 0, 0, 255, 0, 0])
    transparent_palette.paste(1, (0, 0, 4, 8))
    decoded = decode_image_bytes(_encode(transparent_palette, "PNG", transparency=0), LIMITS)
    assert decoded.getpixel((1, 1)) == (255, 0, 0)
    assert decoded.getpixel((6, 1)) == (255, 255, 255)

    assert decode_image_bytes(_encode(Image.new("LA", (8, 8), (0, 0)), "PNG"), LIMITS).getpixel((1, 1)) == (
        255,
        255,
        255,
    )
    assert decode_image_bytes(_encode(Image.new("1", (8, 8), 1), "PNG"), LIMITS).getpixel((1, 1)) == (
        255,
        255,
        255,
    )
    grey16 = Image.new("I;16", (8, 8), 32896)  # 0x8080: mid grey in 16 bits
    assert _close(decode_image_bytes(_encode(grey16, "PNG"), LIMITS).getpixel((1, 1)), (128, 128, 128), 1)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    assert _close(decode_image_bytes(_encode(cmyk, "JPEG"), LIMITS).getpixel((1, 1)), (255, 0, 0), 12)


# ------------------------------------------------------------------------------------------ encoding


def test_encode_png_round_trip() -> None:
    source = _pattern((33, 21))
    raw = encode_png(source)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    b64 = encode_png_base64(source)
    assert not b64.startswith("data:")
    assert base64.b64decode(b64) == raw
    decoded = decode_base64_image(b64, LIMITS)
    assert decoded.tobytes() == source.tobytes()


def test_encode_png_converts_modes_png_cannot_hold() -> None:
    raw = encode_png(Image.new("CMYK", (4, 4), (0, 0, 0, 0)))
    assert decode_image_bytes(raw, LIMITS).getpixel((0, 0)) == (255, 255, 255)


# ------------------------------------------------------------------------------------------ geometry

GRID_SIDES = (1, 5, 10, 63, 64, 65, 100, 333, 1000, 1001, 1024, 1500, 4096, 5000, 100_000)
BUDGETS = (64 * 64, 512 * 512, 1000 * 1000, 1024 * 1024, 2048 * 2048)


@pytest.mark.parametrize("max_pixels", BUDGETS)
def test_fit_model_size_invariants(max_pixels: int) -> None:
    for width, height in itertools.product(GRID_SIDES, repeat=2):
        w, h = fit_model_size(width, height, max_pixels=max_pixels)
        assert w % 16 == 0 and h % 16 == 0, (width, height, w, h)
        assert w >= 64 and h >= 64, (width, height, w, h)
        assert w * h <= max_pixels, (width, height, w, h)
        if width * height <= max_pixels and width >= 64 and height >= 64:
            # Already fits: only rounding to a multiple of 16, never a real rescale.
            assert abs(w - width) < 16 and abs(h - height) < 16, (width, height, w, h)


def test_fit_model_size_random_sizes_are_valid_and_stable() -> None:
    rng = random.Random(1234)
    for _ in range(5000):
        width, height = rng.randint(1, 20_000), rng.randint(1, 20_000)
        budget = rng.choice(BUDGETS)
        w, h = fit_model_size(width, height, max_pixels=budget)
        assert w % 16 == 0 and h % 16 == 0 and min(w, h) >= 64 and w * h <= budget, (width, height, w, h)
        # A size the model already works at maps to itself: re-fitting a model-size image is a no-op.
        assert fit_model_size(w, h, max_pixels=budget) == (w, h)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1, 1), (64, 64)),
        ((63, 64), (64, 64)),
        ((64, 96), (64, 96)),
        ((100, 100), (96, 96)),  # nearest multiple of 16, half rounds up: 6.25 -> 6
        ((104, 104), (112, 112)),  # 6.5 -> 7
        ((1024, 1024), (1024, 1024)),
        ((1000, 1001), (1008, 1008)),  # 1,016,064 px is still within 1024²
        ((4096, 4096), (1024, 1024)),
        ((4096, 2048), (1456, 720)),  # scaled to 1448.2 × 724.1, then rounded to the nearest 16
        ((10, 5000), (64, 5008)),
        ((5000, 10), (5008, 64)),
        ((1, 100_000), (64, 16384)),  # min side forces the long side down so the budget holds
    ],
)
def test_fit_model_size_examples(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert fit_model_size(*size, max_pixels=1024 * 1024) == expected


def test_fit_model_size_rounds_down_rather_than_overshoot() -> None:
    # 1000² is exactly the budget; rounding to 1008² would exceed it, so both sides round down (aspect kept).
    assert fit_model_size(1000, 1000, max_pixels=1000 * 1000) == (992, 992)
    # 72 × 14563 fits 1024²; rounding 72 up to 80 would not, so only that side rounds down.
    assert fit_model_size(72, 14563, max_pixels=1024 * 1024) == (64, 14560)


def test_fit_model_size_aspect_is_kept_when_scaling_down() -> None:
    for width, height in ((4000, 3000), (3000, 4000), (6000, 1000), (1920, 1080), (8192, 4096)):
        w, h = fit_model_size(width, height, max_pixels=1024 * 1024)
        assert w * h > 0.9 * 1024 * 1024
        assert abs(w / h - width / height) / (width / height) < 0.03


def test_fit_model_size_other_multiples() -> None:
    assert fit_model_size(100, 100, max_pixels=1024 * 1024, multiple=8, min_side=60) == (104, 104)
    assert fit_model_size(10, 10, max_pixels=1024 * 1024, multiple=32, min_side=64) == (64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0, "height": 10, "max_pixels": 1024 * 1024},
        {"width": 10, "height": -1, "max_pixels": 1024 * 1024},
        {"width": 10, "height": 10, "max_pixels": 63 * 64},
        {"width": 10, "height": 10, "max_pixels": 1024 * 1024, "multiple": 0},
    ],
)
def test_fit_model_size_rejects_impossible_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        fit_model_size(**kwargs)


@pytest.mark.parametrize(
    "size", [(1, 1), (63, 64), (100, 100), (1000, 1001), (3000, 2000), (10, 900), (64, 96)]
)
def test_to_model_size_and_restore_size(size: tuple[int, int]) -> None:
    source = Image.new("RGB", size, (10, 200, 30))
    model = to_model_size(source, max_pixels=512 * 512)
    assert model.size == fit_model_size(*size, max_pixels=512 * 512)
    assert model.mode == "RGB"
    assert model is not source
    restored = restore_size(model, size)
    assert restored.size == size
    assert _close(restored.getpixel((0, 0)), (10, 200, 30), 2)


def test_to_model_size_keeps_content_in_place() -> None:
    source = _pattern((2000, 1000))
    model = to_model_size(source, max_pixels=256 * 256)
    w, h = model.size
    assert _close(model.getpixel((w // 4, h // 4)), (255, 0, 0), 10)
    assert _close(model.getpixel((3 * w // 4, 3 * h // 4)), (255, 255, 0), 10)


def test_restore_size_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        restore_size(Image.new("RGB", (64, 64)), (0, 10))
