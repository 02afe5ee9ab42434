"""Red-box corpus (task ``perception`` or ``chart``) from a user manifest of images, boxes and Q/A.

The user's file is JSON lines ``{"id", "image", "boxes": [[x0, y0, x1, y1], ...], "question", "answer",
"task"?, "scorer"?, "choices"?}`` with image paths relative to it (the V*/RefChartQA kind). The input image
is copied unchanged; the edit is the same picture with a red outline around every box, its width relative
to the image so the box reads the same on a 512px chart and an 8K photo.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from etchr_tools.data.samples import OPTION_LETTERS, Sample, with_options

RED = (255, 0, 0)
BOX_TASKS = ("perception", "chart")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BBoxEntry:
    """One validated line of the user's manifest."""

    id: str
    image: Path
    boxes: list[list[float]]
    question: str
    answer: str
    task: str
    scorer: str
    choices: list[str] | dict[str, str] | None


@dataclass(frozen=True)
class BBoxOptions:
    """``source_manifest`` (required): the user's JSON-lines file; ``line_width``: outline width as a fraction
    of the image's shorter side (at least 2 px)."""

    source_manifest: str | Path | None = None
    line_width: float = 0.006
    entries: tuple[BBoxEntry, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.source_manifest is None:
            raise ValueError("bbox needs source_manifest: a JSON-lines file of images, boxes and Q/A")
        if not 0 < self.line_width < 0.2:
            raise ValueError(f"line_width must be in (0, 0.2), got {self.line_width}")
        object.__setattr__(self, "entries", tuple(read_source(Path(self.source_manifest))))


def _box(value: Any, where: str) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"{where}: a box must be [x0, y0, x1, y1], got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{where}: a box needs x0 < x1 and y0 < y1, got {value!r}")
    return [x0, y0, x1, y1]


def read_source(path: Path) -> list[BBoxEntry]:
    """The user's rows, validated up front so a bad line fails before any file is written."""
    if not path.is_file():
        raise ValueError(f"source_manifest {path} does not exist")
    entries: list[BBoxEntry] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
            missing = [key for key in ("id", "image", "boxes", "question", "answer") if key not in raw]
        except (json.JSONDecodeError, TypeError):
            raise ValueError(f"{where}: not a JSON object") from None
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        row_id = _UNSAFE.sub("_", str(raw["id"])).strip("_") or f"row{number}"
        if row_id in seen:
            raise ValueError(f"{where}: duplicate id {raw['id']!r}")
        seen.add(row_id)
        image = path.parent / str(raw["image"])
        if not image.is_file():
            raise ValueError(f"{where}: image {image} does not exist")
        boxes = raw["boxes"]
        if not isinstance(boxes, list) or not boxes:
            raise ValueError(f"{where}: boxes must be a non-empty list")
        task = raw.get("task") or "perception"
        if task not in BOX_TASKS:
            raise ValueError(f"{where}: task must be one of {BOX_TASKS}, got {task!r}")
        choices = raw.get("choices")
        entries.append(
            BBoxEntry(
                id=row_id,
                image=image,
                boxes=[_box(box, where) for box in boxes],
                question=str(raw["question"]),
                answer=str(raw["answer"]),
                task=task,
                scorer=str(raw.get("scorer") or ("option" if choices else "auto")),
                choices=choices,
            )
        )
    if not entries:
        raise ValueError(f"{path} holds no rows")
    return entries


def line_px(image: Image.Image, fraction: float) -> int:
    """Outline width in pixels for an image: a fraction of its shorter side, at least 2."""
    return max(2, round(min(image.size) * fraction))


def draw_boxes(image: Image.Image, boxes: list[list[float]], fraction: float) -> Image.Image:
    """A copy with a red outline drawn inside each box's bounds (clipped to the image)."""
    edited = image.convert("RGB")
    draw = ImageDraw.Draw(edited)
    width = line_px(edited, fraction)
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(0, round(x0)), max(0, round(y0))
        x1, y1 = min(edited.width - 1, round(x1)), min(edited.height - 1, round(y1))
        draw.rectangle((x0, y0, x1, y1), outline=RED, width=width)
    return edited


def _question(entry: BBoxEntry) -> str:
    if not entry.choices or "(A)" in entry.question:
        return entry.question
    choices = entry.choices
    if not isinstance(choices, dict):
        choices = dict(zip(OPTION_LETTERS, choices, strict=False))
    return with_options(entry.question, choices)


def generate(rng: random.Random, index: int, options: BBoxOptions) -> Sample:
    """Row ``index`` of the user's manifest with its red-box edit (``rng`` unused: nothing is random)."""
    entry = options.entries[index]
    with Image.open(entry.image) as raw:
        image = raw.convert("RGB")
    meta: dict[str, Any] = {"boxes": entry.boxes}
    if entry.choices:
        meta["choices"] = entry.choices
    return Sample(
        task=entry.task,  # type: ignore[arg-type]  # validated against BOX_TASKS
        question=_question(entry),
        answer=entry.answer,
        scorer=entry.scorer,
        meta=meta,
        image=image,
        edited=draw_boxes(image, entry.boxes, options.line_width),
        source_id=entry.id,
        source_path=entry.image,
    )
