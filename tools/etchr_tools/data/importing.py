"""What every importer shares: finding a release's files, reading its fields, writing the manifest.

Importers read sources as their authors release them (docs/importers.md); a missing or malformed input is
a :class:`ValueError` naming the file and what was expected, raised before the manifest is written. Reading
shows a progress bar on a terminal (the big releases run to hundreds of thousands of rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from etchr.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from etchr_tools.data.samples import OPTION_LETTERS, with_options

Rows = list[ManifestRow]


def rel_path(path: Path, out: Path) -> str:
    """The manifest's image field: ``path`` relative to the manifest's folder, with forward slashes."""
    return Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()


def need_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{path}: not found; expected {expected}")
    return path


def find_file(source: Path, names: Iterable[str], expected: str) -> Path:
    """``source`` itself when it is a file, else the first of ``names`` (relative paths) found under it."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise ValueError(f"{source}: not found; expected {expected}")
    names = list(names)
    for name in names:
        if (source / name).is_file():
            return source / name
    raise ValueError(f"{source}: none of {', '.join(names)} found; expected {expected}")


def load_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc}); expected {expected}") from None


def text_field(record: Mapping[str, Any], key: str, where: str) -> str:
    """A required non-empty field as text (numbers allowed: some answers are stored as numbers)."""
    value = record.get(key) if isinstance(record, Mapping) else None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # some ChartQA copies store the label as a one-element list
    if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip():
        raise ValueError(f"{where}: missing or empty field {key!r} (a string)")
    return str(value).strip()


def multiple_choice(stem: str, options: list[str]) -> tuple[str, dict[str, str]]:
    """The question with ``(A) …`` lines appended, and ``meta.choices``."""
    choices = {OPTION_LETTERS[i]: option for i, option in enumerate(options)}
    return with_options(stem.strip(), choices), choices


def source_meta(benchmark: str, key: str, value: Any, category: Any) -> dict[str, Any]:
    return {"benchmark": benchmark, key: value, "category": category}


def limited(rows: Iterable[ManifestRow], limit: int | None, *, desc: str = "importing") -> Rows:
    """The rows (the first ``limit`` of them), read with a progress bar when stderr is a terminal."""
    chosen = islice(rows, limit) if limit is not None else rows
    return list(tqdm(chosen, desc=desc, unit=" rows", total=limit, disable=None, leave=False))


def write_rows(out: Path, rows: Rows) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST_NAME
    write_manifest(path, rows)
    return path


def parquet_records(
    table: Path,
    required: Sequence[str],
    expected: str,
    *,
    optional: Sequence[str] | None = (),
    batch_size: int = 32,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, record) of a Parquet file, streamed in small batches (releases embed their images).

    Reads the ``required`` columns and those of ``optional`` the file has (None: all it has). Needs pyarrow
    (the ``import`` extra); a file that is not Parquet or lacks a required column is a :class:`ValueError`
    naming it.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{table}: reading Parquet needs pyarrow (pip install 'etchr-services[import]')"
        ) from None
    try:
        parquet = pq.ParquetFile(table)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
        raise ValueError(f"{table}: not a readable Parquet file ({exc}); expected {expected}") from None
    names = parquet.schema_arrow.names
    missing = [column for column in required if column not in names]
    if missing:
        raise ValueError(f"{table}: missing column(s) {', '.join(missing)}; expected {expected}")
    columns = names if optional is None else [*required, *(column for column in optional if column in names)]
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        for record in batch.to_pylist():
            yield number, record
            number += 1
