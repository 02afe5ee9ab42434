"""Corpus builders: ``etchr data build {maze,frozenlake,jigsaw,bbox}`` (docs/data.md).

Every generator (``maze``, ``frozenlake``, ``jigsaw``, ``bbox``) returns a
:class:`~etchr_tools.data.samples.Sample` (question, answer, scorer, structured ``meta``, input and target
edit images); :func:`build_corpus` picks the kind's generator from :data:`GENERATORS`, numbers the samples,
saves the images and writes the manifest. Each row gets its own ``random.Random`` seeded from (kind, seed,
index), so a corpus is byte-identical for a seed and row *i* does not depend on how many rows came before it.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from etchr.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from etchr_tools.data import bbox, frozenlake, jigsaw, maze
from etchr_tools.data.samples import Sample

__all__ = ["GENERATORS", "CorpusKind", "build_corpus"]

CorpusKind = Literal["maze", "frozenlake", "jigsaw", "bbox"]
IMAGES_DIR = "images"

# kind -> (its options dataclass, its generator: (rng, index, options) -> Sample)
GENERATORS: Mapping[str, tuple[type[Any], Callable[[random.Random, int, Any], Sample]]] = MappingProxyType(
    {
        "maze": (maze.MazeOptions, maze.generate),
        "frozenlake": (frozenlake.FrozenLakeOptions, frozenlake.generate),
        "jigsaw": (jigsaw.JigsawOptions, jigsaw.generate),
        "bbox": (bbox.BBoxOptions, bbox.generate),
    }
)


def make_options(cls: type[Any], options: dict[str, Any]) -> Any:
    """The options dataclass from keyword options; an unknown name is a ValueError listing the valid ones."""
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**options)


def build_corpus(
    kind: CorpusKind, *, n: int, out: Path, seed: int = 0, progress: bool = True, **options: Any
) -> Path:
    """Build ``n`` rows of ``kind`` into ``out`` and return the manifest path (``out/manifest.jsonl``).

    Images go to ``out/images/`` as PNG; manifest paths are relative to the manifest. ``options`` are the
    fields of the kind's options dataclass (docs/data.md); an unknown one is a ValueError.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if kind not in GENERATORS:
        raise ValueError(f"unknown corpus kind {kind!r}; valid: {', '.join(GENERATORS)}")
    cls, generate = GENERATORS[kind]
    opts = make_options(cls, options)
    if kind == "bbox":
        n = min(n, len(opts.entries))  # the user's manifest bounds the corpus
    out = Path(out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    with _progress(progress, f"building {kind}", n) as advance:
        for index in range(n):
            sample = generate(random.Random(f"etchr:{kind}:{seed}:{index}"), index, opts)
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
