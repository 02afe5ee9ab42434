"""Jigsaw corpus (task ``jigsaw``): shuffled tiles in, the tiles moved back to their places as the edit.

``meta["permutation"][p]`` is the displayed input tile that belongs at restored position ``p`` (row-major),
so restoring is ``edit[p] = input[permutation[p]]``. Tile borders and index labels, when drawn, belong to the
tiles and move with them, so the edit is exactly the input's tiles rearranged (and, without markings, exactly
the original picture).
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from etchr_tools.data.samples import QuestionForm, Sample, int_range, mc_question, pick_form

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MIN_SOURCE_SIDE = 96


@dataclass(frozen=True)
class JigsawOptions:
    """``rows``/``cols``: grid (int or inclusive range); ``size``: side of the square puzzle in pixels;
    ``source_dir``: folder of source pictures (default: sample images an installed package ships, else
    procedural textures); ``markings``: thin tile borders and index labels on the input."""

    rows: int | Sequence[int] = (2, 3)
    cols: int | Sequence[int] = (2, 3)
    size: int = 384
    source_dir: str | Path | None = None
    markings: bool = True
    question_form: QuestionForm = "open"
    sources: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        int_range(self.rows, "rows", low=1)
        int_range(self.cols, "cols", low=1)
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if self.source_dir is not None and not Path(self.source_dir).is_dir():
            raise ValueError(f"source_dir {self.source_dir} is not a folder")
        object.__setattr__(self, "sources", tuple(source_images(self.source_dir)))  # scanned once per build


def default_source_dirs() -> list[Path]:
    """Folders of sample pictures shipped by installed packages (matplotlib's sample_data)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "mpl-data" / "sample_data"
    return [folder] if folder.is_dir() else []


def source_images(source_dir: str | Path | None) -> list[Path]:
    """Usable pictures (at least MIN_SOURCE_SIDE px a side), sorted so the choice is the same everywhere."""
    dirs = [Path(source_dir)] if source_dir is not None else default_source_dirs()
    found: list[Path] = []
    for folder in dirs:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                try:
                    with Image.open(path) as image:
                        if min(image.size) >= MIN_SOURCE_SIDE:
                            found.append(path)
                except OSError:
                    continue
    if source_dir is not None and not found:
        raise ValueError(f"no usable images (>= {MIN_SOURCE_SIDE}px a side) under {source_dir}")
    return found


def procedural_image(rng: random.Random, size: int) -> Image.Image:
    """A textured picture (gradient, shapes, stripes) whose tiles all look different: the fallback source."""
    base = [rng.randrange(256) for _ in range(6)]
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        t = y / max(1, size - 1)
        draw.line((0, y, size, y), fill=tuple(round(base[i] * (1 - t) + base[i + 3] * t) for i in range(3)))
    for _ in range(12):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        w, h = rng.randrange(size // 8, size // 2), rng.randrange(size // 8, size // 2)
        color = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=color)
    for i in range(0, size, max(4, size // 24)):
        draw.line((i, 0, 0, i), fill=(255, 255, 255), width=1)
    return image


def _source(rng: random.Random, sources: Sequence[Path], size: int) -> Image.Image:
    if not sources:
        return procedural_image(rng, size)
    with Image.open(rng.choice(sources)) as raw:
        image = raw.convert("RGB")
    side = max(MIN_SOURCE_SIDE // 2, round(min(image.size) * rng.uniform(0.7, 1.0)))
    x0, y0 = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
    return image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)


def _mark(tile: Image.Image, label: int) -> Image.Image:
    tile = tile.copy()
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, tile.width - 1, tile.height - 1), outline=(255, 255, 255), width=1)
    pad = max(2, min(tile.size) // 20)
    text = str(label)
    box = draw.textbbox((pad, pad), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255))
    return tile


def tiles_of(image: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    """The row-major tiles of an image whose sides divide evenly by the grid."""
    tw, th = image.width // cols, image.height // rows
    return [
        image.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th)) for r in range(rows) for c in range(cols)
    ]


def assemble(tiles: Sequence[Image.Image], rows: int, cols: int) -> Image.Image:
    """Paste row-major tiles back into one image."""
    tw, th = tiles[0].size
    image = Image.new("RGB", (cols * tw, rows * th))
    for i, tile in enumerate(tiles):
        image.paste(tile, ((i % cols) * tw, (i // cols) * th))
    return image


def format_permutation(permutation: Sequence[int]) -> str:
    """The answer as the family writes it: ``"[2, 0, 3, 1]"``."""
    return "[" + ", ".join(str(v) for v in permutation) + "]"


def question_stem(rows: int, cols: int) -> str:
    """What the family asks about a shuffled ``rows`` x ``cols`` grid (the importers ask it too)."""
    count = rows * cols
    return (
        f"The image is a {rows}x{cols} jigsaw whose {count} tiles are shuffled; the tiles are numbered 0 to "
        f"{count - 1} in reading order (left to right, top to bottom) as displayed. For each position of the "
        "restored picture, in reading order, which displayed tile belongs there?"
    )


def open_question(rows: int, cols: int) -> str:
    """The open form: the stem and how to write the permutation."""
    example = format_permutation(range(rows * cols))
    return f"{question_stem(rows, cols)} Answer with the list of tile numbers, e.g. {example}."


def restore(image: Image.Image, rows: int, cols: int, permutation: Sequence[int]) -> Image.Image:
    """The displayed tiles moved back: restored position ``p`` shows displayed tile ``permutation[p]``."""
    displayed = tiles_of(image, rows, cols)
    return assemble([displayed[d] for d in permutation], rows, cols)


def generate(rng: random.Random, index: int, options: JigsawOptions) -> Sample:
    """One puzzle: a source crop cut into tiles, shuffled by a non-identity permutation."""
    rows = rng.randint(*int_range(options.rows, "rows", low=1))
    cols = rng.randint(*int_range(options.cols, "cols", low=1))
    if rows * cols < 2:
        cols = 2  # a 1x1 puzzle has nothing to restore
    count = rows * cols
    side_w, side_h = options.size - options.size % cols, options.size - options.size % rows
    original = _source(rng, options.sources, options.size).resize((side_w, side_h))
    pieces = tiles_of(original, rows, cols)
    permutation = list(range(count))
    while permutation == sorted(permutation):
        rng.shuffle(permutation)
    displayed: list[Image.Image] = [pieces[0]] * count
    for p, d in enumerate(permutation):  # restored position p shows displayed tile d
        displayed[d] = _mark(pieces[p], d) if options.markings else pieces[p]
    image = assemble(displayed, rows, cols)
    edited = assemble([displayed[d] for d in permutation], rows, cols)
    meta = {"rows": rows, "cols": cols, "permutation": permutation}
    stem = question_stem(rows, cols)
    if pick_form(rng, options.question_form) == "open" or math.factorial(count) < 5:
        answer = format_permutation(permutation)
        return Sample("jigsaw", open_question(rows, cols), answer, "jigsaw", meta, image, edited)
    wrong: list[str] = []
    while len(wrong) < 3:
        candidate = format_permutation(rng.sample(range(count), count))
        if candidate != format_permutation(permutation) and candidate not in wrong:
            wrong.append(candidate)
    question, letter = mc_question(rng, stem, format_permutation(permutation), wrong)
    return Sample("jigsaw", question, letter, "option", meta, image, edited)
