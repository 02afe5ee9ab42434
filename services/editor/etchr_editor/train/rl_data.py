"""The RL set: the rows of a corpus where the ground-truth edit makes the difference (Eq. 1).

``POST /filter`` asks U to answer each question from the image alone and with its ground-truth edit; a row
is kept when U fails alone and succeeds with the edit. Those are the questions on which a better edit can
still earn reward, so RL spends its samples there.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from etchr.data.manifest import MANIFEST_NAME, ManifestRow, read_manifest, write_manifest
from etchr_editor.train.examples import manifest_path
from etchr_reward.client import RewardClient

CHUNK_ROWS = 256  # rows whose images are held in memory (base64) at once


@dataclass(frozen=True)
class FilterSummary:
    manifest: Path
    seen: int
    kept: int


def filter_manifest(data: Path, out: Path, client: RewardClient, *, k: int = 1) -> FilterSummary:
    """Write ``out/manifest.jsonl`` with the rows ``/filter`` keeps; image paths re-rooted at ``out``."""
    source = manifest_path(data)
    root = source.parent
    out.mkdir(parents=True, exist_ok=True)
    target = out / MANIFEST_NAME
    if target.resolve() == source.resolve():
        raise ValueError(f"--out {out} would overwrite the manifest being filtered")
    rows = list(read_manifest(source))
    for row in rows:
        if row.edited_image is None:
            raise ValueError(f"{source}: row {row.id!r} has no edited_image (Eq. 1 needs the true edit)")
    kept: list[ManifestRow] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        outcome = client.filter([_filter_item(row, root) for row in chunk], k=k)
        keep = set(outcome.keep)
        kept += [_rerooted(row, root, out) for row in chunk if row.id in keep]
    write_manifest(target, kept)
    return FilterSummary(manifest=target, seen=len(rows), kept=len(kept))


def _filter_item(row: ManifestRow, root: Path) -> dict[str, object]:
    assert row.edited_image is not None
    return {
        "id": row.id,
        "image": _b64(root / row.image),
        "question": row.question,
        "answer": row.answer,
        "edited_image": _b64(root / row.edited_image),
        "task": row.task,
        "scorer": row.scorer,
        "meta": row.meta,
    }


def _b64(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"no such image {path}")
    return base64.b64encode(path.read_bytes()).decode()


def _rerooted(row: ManifestRow, root: Path, out: Path) -> ManifestRow:
    """The same row with its paths relative to ``out`` (the images stay where they are)."""

    def rel(path: str | None) -> str | None:
        return None if path is None else os.path.relpath((root / path).resolve(), out.resolve())

    return row.model_copy(update={"image": rel(row.image), "edited_image": rel(row.edited_image)})
