"""Corpus builders: ``etchr data build {maze,frozenlake,jigsaw,bbox}`` (SPEC §9, docs/data.md).

Every generator returns a :class:`Sample` (question, answer, scorer, structured ``meta``, input and target
edit images); :func:`build_corpus` numbers them, saves the images and writes the manifest. Each row gets its
own ``random.Random`` seeded from (kind, seed, index), so a corpus is byte-identical for a seed and row *i*
does not depend on how many rows came before it.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from etchr.data.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from etchr.protocol.edit import EditTask

__all__ = ["CorpusKind", "Sample", "build_corpus", "int_range", "mc_question"]

CorpusKind = Literal["maze", "frozenlake", "jigsaw", "bbox"]
QuestionForm = Literal["open", "mc", "mixed"]
IMAGES_DIR = "images"
_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Sample:
    """One generated example before it is given an id and file names."""

    task: EditTask
    question: str
    answer: str
    scorer: str
    meta: dict[str, Any]
    image: Image.Image
    edited: Image.Image
    source_id: str | None = None  # bbox keeps the user's id ...
    source_path: Path | None = None  # ... and copies the user's image file as it is


def int_range(value: int | Sequence[int], name: str, *, low: int = 1) -> tuple[int, int]:
    """An inclusive ``(min, max)`` from an int or a pair, so options accept both ``9`` and ``(9, 15)``."""
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a (min, max) pair, got {value!r}")
    if pair[0] < low or pair[0] > pair[1]:
        raise ValueError(f"{name} must satisfy {low} <= min <= max, got {pair}")
    return pair


def pick_form(rng: random.Random, form: QuestionForm) -> Literal["open", "mc"]:
    """The question form of one row; "mixed" draws open or multiple choice with equal odds."""
    if form not in ("open", "mc", "mixed"):
        raise ValueError(f"question_form must be 'open', 'mc' or 'mixed', got {form!r}")
    if form == "mixed":
        return "open" if rng.random() < 0.5 else "mc"
    return form


def mc_question(rng: random.Random, stem: str, correct: str, distractors: Sequence[str]) -> tuple[str, str]:
    """A multiple-choice question and its answer letter: the correct option at a random position."""
    options = [correct, *distractors]
    if len(set(options)) != len(options) or len(options) > len(_LETTERS):
        raise ValueError(f"options must be distinct and at most {len(_LETTERS)}: {options!r}")
    rng.shuffle(options)
    lines = "\n".join(f"({_LETTERS[i]}) {option}" for i, option in enumerate(options))
    return f"{stem}\n{lines}\nAnswer with the option letter.", _LETTERS[options.index(correct)]


def make_options(cls: type[Any], options: dict[str, Any]) -> Any:
    """The options dataclass from keyword options; an unknown name is a ValueError listing the valid ones."""
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**options)


def _generators(kind: str) -> tuple[type[Any], Callable[..., Any]]:
    # Imported here: the generator modules import Sample and the helpers above from this module.
    from etchr.data import bbox, frozenlake, jigsaw, maze

    table: dict[str, tuple[type[Any], Callable[..., Any]]] = {
        "maze": (maze.MazeOptions, maze.generate),
        "frozenlake": (frozenlake.FrozenLakeOptions, frozenlake.generate),
        "jigsaw": (jigsaw.JigsawOptions, jigsaw.generate),
        "bbox": (bbox.BBoxOptions, bbox.generate),
    }
    if kind not in table:
        raise ValueError(f"unknown corpus kind {kind!r}; valid: {', '.join(table)}")
    return table[kind]


def build_corpus(
    kind: CorpusKind, *, n: int, out: Path, seed: int = 0, progress: bool = True, **options: Any
) -> Path:
    """Build ``n`` rows of ``kind`` into ``out`` and return the manifest path (``out/manifest.jsonl``).

    Images go to ``out/images/`` as PNG; manifest paths are relative to the manifest. ``options`` are the
    fields of the kind's options dataclass (docs/data.md); an unknown one is a ValueError.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cls, generate = _generators(kind)
    opts = make_options(cls, options)
    if kind == "bbox":
        n = min(n, len(opts.entries))  # the user's manifest bounds the corpus
    out = Path(out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    with _progress(progress, f"building {kind}", n) as advance:
        for index in range(n):
            sample: Sample = generate(random.Random(f"etchr:{kind}:{seed}:{index}"), index, opts)
            row_id = sample.source_id or f"{kind}-s{seed}-{index:05d}"
            suffix = sample.source_path.suffix.lower() if sample.source_path else ".png"
            image_rel = f"{IMAGES_DIR}/{row_id}{suffix}"
            edit_rel = f"{IMAGES_DIR}/{row_id}_edit.png"
            if sample.source_path is not None:
                shutil.copyfile(sample.source_path, out / image_rel)
            else:
                sample.image.save(out / image_rel, format="PNG")
            sample.edited.save(out / edit_rel, format="PNG")
            rows.append(
                ManifestRow(
                    id=row_id,
                    task=sample.task,
                    image=image_rel,
                    question=sample.question,
                    answer=sample.answer,
                    edited_image=edit_rel,
                    scorer=sample.scorer,
                    meta=sample.meta,
                )
            )
            advance()
    manifest = out / MANIFEST_NAME
    write_manifest(manifest, rows)
    return manifest


@contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar when asked for, a no-op otherwise (tests and library callers stay quiet)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
