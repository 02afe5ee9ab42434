"""The manifest format (docs/data.md): JSON lines, image paths relative to the manifest file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from etchr.protocol.edit import EditTask

MANIFEST_NAME = "manifest.jsonl"


class ManifestRow(BaseModel):
    """One scorable example: the input image, the question, the answer and how to score it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    task: EditTask
    image: str = Field(description="path relative to the manifest")
    question: str = Field(min_length=1)
    answer: str
    edited_image: str | None = Field(default=None, description="the target edit I_e*, relative path")
    scorer: str | None = Field(default=None, description="matching rule (docs/answers.md); None = auto")
    meta: dict[str, Any] | None = Field(default=None, description="structured ground truth, re-checkable")


def reroot(row: ManifestRow, root: Path, out: Path) -> ManifestRow:
    """``row`` (read from a manifest in ``root``) with its image paths relative to ``out`` instead: a manifest
    written there points at the same files, which stay where they are."""

    def rel(path: str | None) -> str | None:
        if path is None:
            return None
        return Path(os.path.relpath((root / path).resolve(), out.resolve())).as_posix()

    return row.model_copy(update={"image": rel(row.image), "edited_image": rel(row.edited_image)})


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> int:
    """Write rows as JSON lines; returns how many."""
    count = 0
    with path.open("w") as out:
        for row in rows:
            out.write(row.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count


def read_manifest(path: Path) -> Iterator[ManifestRow]:
    """Rows of a manifest; a malformed line raises ValueError naming the file and line."""
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield ManifestRow.model_validate(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
