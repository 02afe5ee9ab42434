"""Training examples from a manifest, and the deterministic stream of micro-batches trainers consume.

Each row becomes (reference image, prompt, target image) as the editor would see it: decoded by the
service's decoder (limits, EXIF orientation, alpha on white), the prompt from ``TaskRegistry.editor_prompt``
and the size from ``to_model_size`` into the run's pixel budget — the serving code, and by default the
editor's own budget (``RunOptions.max_pixels``); the target is resized to the reference's size. Rows of
one micro-batch share a size (one token count). The order is a pure function of (seed, micro-batch index),
so a resumed run sees exactly the batches an uninterrupted one would, on any number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count, islice
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from etchr.imaging import ImageLimits, decode_image_bytes, fit_model_size, restore_size, to_model_size
from etchr.manifest import MANIFEST_NAME, read_manifest
from etchr.tasks import TaskRegistry


@dataclass(frozen=True)
class TrainingExample:
    id: str
    prompt: str  # what the editor is conditioned on: meta-prompt + question
    image: Path
    target: Path | None  # the SFT target edit; RL rows need none
    size: tuple[int, int]  # (width, height) the model trains at: the editor's fitted size for the image
    question: str
    answer: str
    task: str
    scorer: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class TrainingBatch:
    index: int  # global micro-batch index: names its noise and timesteps
    examples: list[TrainingExample]
    images: list[PIL.Image.Image]
    targets: list[PIL.Image.Image]  # empty for rows without a target

    @property
    def prompts(self) -> list[str]:
        return [example.prompt for example in self.examples]


def manifest_path(data: Path) -> Path:
    """``--data`` may name the manifest or the corpus folder holding ``manifest.jsonl``."""
    path = data / MANIFEST_NAME if data.is_dir() else data
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}")
    return path


def load_examples(
    data: Path, tasks: TaskRegistry, *, max_pixels: int, require_target: bool = True
) -> list[TrainingExample]:
    """Every manifest row; with ``require_target`` (SFT) a row without ``edited_image`` is an error."""
    path = manifest_path(data)
    root = path.parent
    examples: list[TrainingExample] = []
    for row in read_manifest(path):
        if row.edited_image is None and require_target:
            raise ValueError(f"{path}: row {row.id!r} has no edited_image, the SFT target")
        image = root / row.image
        target = root / row.edited_image if row.edited_image is not None and require_target else None
        for file in (image, target):
            if file is not None and not file.is_file():
                raise FileNotFoundError(f"{path}: row {row.id!r}: no such file {file}")
        width, height = _upright_size(image)
        examples.append(
            TrainingExample(
                id=row.id,
                prompt=tasks.editor_prompt(row.task, row.question),
                image=image,
                target=target,
                size=fit_model_size(width, height, max_pixels=max_pixels),
                question=row.question,
                answer=row.answer,
                task=row.task,
                scorer=row.scorer,
                meta=row.meta,
            )
        )
    if not examples:
        raise ValueError(f"{path}: the manifest has no rows")
    return examples


def micro_batch_indices(
    examples: Sequence[TrainingExample], batch_size: int, seed: int
) -> Iterator[list[int]]:
    """Endless micro-batches of example indices: a fresh seeded permutation per epoch, grouped by size.

    A size's leftover rows at the end of an epoch form a smaller batch rather than being dropped, so a small
    corpus is seen whole every epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    for epoch in count():
        order = np.random.default_rng([seed, epoch]).permutation(len(examples))
        pending: dict[tuple[int, int], list[int]] = {}
        for index in order.tolist():
            bucket = pending.setdefault(examples[index].size, [])
            bucket.append(index)
            if len(bucket) == batch_size:
                yield bucket
                pending[examples[index].size] = []
        yield from (bucket for bucket in pending.values() if bucket)


def micro_batches(
    examples: Sequence[TrainingExample],
    *,
    batch_size: int,
    seed: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    limits: ImageLimits,
    max_pixels: int,
) -> Iterator[TrainingBatch]:
    """This process's share of the stream from global micro-batch ``start`` on: every ``world_size``-th."""
    stream = islice(
        enumerate(micro_batch_indices(examples, batch_size, seed)), start + rank, None, world_size
    )
    for index, members in stream:
        chosen = [examples[i] for i in members]
        images, targets = [], []
        for example in chosen:
            image = to_model_size(_decode(example.image, limits), max_pixels=max_pixels)
            if image.size != example.size:
                raise ValueError(f"{example.image} changed size since the manifest was read")
            images.append(image)
            if example.target is not None:
                targets.append(restore_size(_decode(example.target, limits), example.size))
        yield TrainingBatch(index=index, examples=chosen, images=images, targets=targets)


def _decode(path: Path, limits: ImageLimits) -> PIL.Image.Image:
    try:
        return decode_image_bytes(path.read_bytes(), limits)
    except ValueError as exc:  # ImageError: name the file, the message alone does not
        raise ValueError(f"{path}: {exc}") from exc


_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _upright_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header alone (no pixel decoding)."""
    with PIL.Image.open(path) as opened:
        width, height = opened.size
        if opened.getexif().get(0x0112) in _ROTATED:
            return height, width
    return width, height
