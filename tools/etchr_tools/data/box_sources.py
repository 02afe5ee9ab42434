"""Importers of the paper's Stage I sources whose target edit is red boxes: V* training data and RefChartQA.

Both read a release as its authors publish it (docs/importers.md, "SFT sources") and write
``out/manifest.jsonl`` rows that ``etchr train sft`` reads: ``image`` = the original picture,
``edited_image`` = the same picture with the annotated box(es) drawn the way the bbox corpus draws them
(:func:`etchr_tools.data.bbox.draw_boxes`, its default outline width: a red outline inside each box),
``meta.boxes`` = the boxes as ``[x0, y0, x1, y1]`` pixel corners of that picture, clipped to it.

- ``vstar-train`` (task ``perception``): the V* / SEAL VQA training data, ``craigwu/seal_vqa_data`` on the
  Hugging Face hub (github.com/penghao-wu/vstar, README "Training Dataset"). Its files are LLaVA-style JSON
  lists; the reader checked is the authors' ``LazySupervisedDataset`` in
  ``LLaVA/llava/train/train_search.py``: ``image`` is relative to the training's ``--image_folder``
  (``gqa/images/…``, ``coco2014/train2014/…``, ``coco2017/train2017/…``), ``conversations`` alternate
  ``human`` / ``gpt`` turns, and a visual-search record carries ``search`` and
  ``target_instances = [{"name", "bbox": [x, y, w, h]}]`` in pixels (its ``normalize_bbox`` reads
  ``(x, y, x + w, y + h)``). The question is the first human turn without the ``<image>`` token and
  SEAL's "Additional visual information to focus on: <object>…" line; the answer the gpt turn after it.
- ``refchartqa`` (task ``chart``): RefChartQA, ``omoured/RefChartQA`` on the hub
  (github.com/moured/RefChartQA): ``data/{train,validation,test}-NNNNN-of-NNNNN.parquet`` with columns
  ``id``, ``image`` (``{bytes, path}``), ``query``, ``label``, ``type`` (human / machine / pot) and
  ``grounding_bboxes``, a list of ``{x, y, w, h}`` in pixels, as the authors' ``evaluation/evaluate.py``
  (on the hub) reads them (``convert_top_left_to_xyxy_rep``). Charts are decoded into
  ``out/images/refchartqa/``.

A box is converted from ``[x, y, w, h]`` to ``[x, y, x + w, y + h]`` and clamped to the image; a box with
nothing left inside is dropped, and a record with no box left is skipped (a warning counts them): it has no
target to learn. A missing or malformed file, record or field raises :class:`ValueError` naming the file
(and record) and what was expected.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image, UnidentifiedImageError

from etchr.manifest import ManifestRow
from etchr_tools.data.bbox import BBoxOptions, draw_boxes
from etchr_tools.data.importing import (
    limited,
    load_json,
    parquet_records,
    rel_path,
    source_meta,
    text_field,
    write_rows,
)

__all__ = ["IMPORTERS", "VSTAR_FILES", "import_refchartqa", "import_vstar_train", "xywh_to_corners"]

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
# The bbox corpus's outline width (a fraction of the image's shorter side), so both draw the same target.
LINE_WIDTH: float = next(f.default for f in dataclasses.fields(BBoxOptions) if f.name == "line_width")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: box coordinate {value!r} is not a finite number")
    return float(value)


def xywh_to_corners(x: float, y: float, w: float, h: float, width: int, height: int) -> list[float] | None:
    """``[x, y, w, h]`` pixels as ``[x0, y0, x1, y1]`` clamped to a ``width`` x ``height`` image (rounded
    to 1/10,000 px); None when no area is left inside the image."""
    x0, x1 = (min(max(v, 0.0), float(width)) for v in (x, x + w))
    y0, y1 = (min(max(v, 0.0), float(height)) for v in (y, y + h))
    if x1 <= x0 or y1 <= y0:
        return None
    return [round(v, 4) for v in (x0, y0, x1, y1)]


def _open_rgb(data: Path | bytes, where: str) -> Image.Image:
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as raw:
            return raw.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{where}: not a readable image ({exc})") from None


def _save_edit(image: Image.Image, boxes: list[list[float]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_boxes(image, boxes, LINE_WIDTH).save(path, format="PNG")
    return path


def _report(name: str, skipped: Counter[str]) -> None:
    for reason, count in sorted(skipped.items()):
        log.warning("%s: skipped %d record(s): %s", name, count, reason)


# ------------------------------------------------------------------------------------------ V* training


# The files of craigwu/seal_vqa_data with annotated targets: GQA (+ VAW attributes, on GQA/VG images) and the
# COCO ones (spatial relations, LLaVA focus). llava_instruct_data.json (LLaVA's instructions) and
# negative_data.json ("cannot answer" replies) are read only when named as the source.
VSTAR_FILES = (
    "GQA_data.json",
    "vaw_attribute_data.json",
    "spatial_relation_data.json",
    "llava_focus_data.json",
)
_VSTAR_EXPECTED = (
    'a JSON list of LLaVA-style records {"image", "conversations": [{"from": "human" | "gpt", "value"}, …], '
    '"search", "target_instances": [{"name", "bbox": [x, y, w, h]}]}'
)
_FOCUS_LINE = re.compile(r"^[ \t]*Additional visual information to focus on:[^\n]*(?:\n|$)", re.MULTILINE)


def _vstar_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        for folder in (source, source / "seal_vqa_data"):
            files = [folder / name for name in VSTAR_FILES if (folder / name).is_file()]
            if files:
                return files
    raise ValueError(
        f"{source}: none of {', '.join(VSTAR_FILES)} found (in it or seal_vqa_data/); expected the V* "
        "training data (huggingface.co/datasets/craigwu/seal_vqa_data) or one of its JSON files"
    )


def _vstar_image(relative: str, roots: list[Path], where: str) -> Path:
    for root in roots:
        if (root / relative).is_file():
            return root / relative
    tried = " or ".join(str(root) for root in roots)
    raise ValueError(
        f"{where}: image {relative!r} not found under {tried}; expected the image folder (gqa/images, "
        "coco2014/train2014, coco2017/train2017) to hold the JSON files or their folder"
    )


def _vstar_exchange(record: Mapping[str, Any], where: str) -> tuple[str, str]:
    """The first human turn (SEAL's markup removed) and the gpt turn that answers it."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(turn, Mapping) for turn in turns):
        raise ValueError(f"{where}: field 'conversations' is not a list of turns; expected {_VSTAR_EXPECTED}")
    first = next((i for i, turn in enumerate(turns) if turn.get("from") == "human"), None)
    if first is None or first + 1 >= len(turns) or turns[first + 1].get("from") != "gpt":
        raise ValueError(f"{where}: no human turn answered by a gpt turn; expected {_VSTAR_EXPECTED}")
    asked = text_field(turns[first], "value", f"{where}.conversations[{first}]").replace("<image>", "")
    question = _FOCUS_LINE.sub("", asked.strip()).strip()
    if not question:
        raise ValueError(f"{where}.conversations[{first}]: no question left once SEAL's markup is removed")
    return question, text_field(turns[first + 1], "value", f"{where}.conversations[{first + 1}]")


def _vstar_targets(record: Mapping[str, Any], where: str) -> list[tuple[str, list[float]]]:
    instances = record.get("target_instances")
    if not isinstance(instances, list):
        raise ValueError(f"{where}: field 'target_instances' is not a list; expected {_VSTAR_EXPECTED}")
    targets = []
    for k, instance in enumerate(instances):
        at = f"{where}.target_instances[{k}]"
        bbox = instance.get("bbox") if isinstance(instance, Mapping) else None
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{at}: 'bbox' must be [x, y, w, h] in pixels, got {bbox!r}")
        targets.append((str(instance.get("name") or ""), [_number(v, at) for v in bbox]))
    return targets


def _vstar_rows(files: list[Path], source: Path, out: Path, skipped: Counter[str]) -> Iterator[ManifestRow]:
    images_dir = out / IMAGES_DIR / "vstar-train"
    for path in files:
        records = load_json(path, _VSTAR_EXPECTED)
        if not isinstance(records, list):
            raise ValueError(f"{path}: not a JSON list; expected {_VSTAR_EXPECTED}")
        roots = list(dict.fromkeys([path.parent, path.parent.parent, *([source] if source.is_dir() else [])]))
        for i, record in enumerate(records):
            where = f"{path}[{i}]"
            if not isinstance(record, Mapping):
                raise ValueError(f"{where}: not an object; expected {_VSTAR_EXPECTED}")
            if "target_instances" not in record:
                if "search" in record:  # the authors' reader takes 'search' to mean target_instances exist
                    raise ValueError(f"{where}: 'search' is set but 'target_instances' is missing")
                skipped["no target_instances (not a visual-search record)"] += 1
                continue
            targets = _vstar_targets(record, where)
            question, answer = _vstar_exchange(record, where)
            relative = text_field(record, "image", where)
            image_path = _vstar_image(relative, roots, where)
            image = _open_rgb(image_path, f"{where}: image {image_path}")
            kept = [(name, xywh_to_corners(*bbox, *image.size)) for name, bbox in targets]
            boxes = [box for _, box in kept if box is not None]
            if not boxes:
                skipped["no target box inside the image"] += 1
                continue
            row_id = f"vstar-train-{_UNSAFE.sub('_', path.stem)}-{i}"
            edit = _save_edit(image, boxes, images_dir / f"{row_id}_edit.png")
            source_info = source_meta("vstar-train", "index", i, path.stem)
            source_info |= {"file": path.name, "image": relative, "image_set": relative.split("/", 1)[0]}
            if "id" in record:
                source_info["id"] = record["id"]
            yield ManifestRow(
                id=row_id,
                task="perception",
                image=rel_path(image_path, out),
                question=question,
                answer=answer,
                edited_image=rel_path(edit, out),
                scorer="auto",
                meta={
                    "boxes": boxes,
                    "targets": [name for name, box in kept if box is not None],
                    "source_boxes": [bbox for _, bbox in targets],
                    "image_size": list(image.size),
                    "source": source_info,
                },
            )
    _report("vstar-train", skipped)


def import_vstar_train(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """V* training data (SEAL's ``seal_vqa_data``): its folder (or ``seal_vqa_data/`` under ``source``) or one
    of its JSON files, with the image folders (``gqa/images``, ``coco2014/train2014``, ``coco2017/train2017``)
    in the JSON folder or its parent. ``seed`` is unused: nothing is drawn at random."""
    source, out = Path(source), Path(out)
    files = _vstar_files(source)
    return write_rows(out, limited(_vstar_rows(files, source, out, Counter()), limit, desc="vstar-train"))


# -------------------------------------------------------------------------------------------- RefChartQA


_REFCHART_COLUMNS = ("id", "image", "query", "label", "grounding_bboxes")
_REFCHART_EXPECTED = (
    "RefChartQA Parquet with columns id, image ({bytes, path}), query, label, type, "
    "grounding_bboxes ([{x, y, w, h}, …] in pixels)"
)


def _refchart_tables(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    tables = []
    if source.is_dir():
        tables = [t for folder in (source, source / "data") for t in sorted(folder.glob("train-*.parquet"))]
    if not tables:
        raise ValueError(
            f"{source}: no train-*.parquet found (in it or data/); expected RefChartQA's "
            "data/train-NNNNN-of-NNNNN.parquet (huggingface.co/datasets/omoured/RefChartQA); "
            "name one file to import another split"
        )
    return tables


def _refchart_records(table: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of one Parquet file, streamed in small batches (the charts are embedded)."""
    for number, record in parquet_records(table, _REFCHART_COLUMNS, _REFCHART_EXPECTED, optional=("type",)):
        yield f"{table}[{number}]", record


def _refchart_image(cell: Any, where: str) -> tuple[bytes, str]:
    """The embedded chart (a datasets ``Image`` cell, ``{bytes, path}``) and its file extension."""
    data = cell.get("bytes") if isinstance(cell, Mapping) else cell
    if not isinstance(data, bytes) or not data:
        raise ValueError(f"{where}: column 'image' holds no image bytes; expected {_REFCHART_EXPECTED}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{where}: column 'image' is not an image") from None
    return data, {"jpeg": "jpg"}.get(kind, kind)


def _refchart_boxes(raw: Any, where: str) -> list[tuple[float, float, float, float]]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: column 'grounding_bboxes' is not a list; expected {_REFCHART_EXPECTED}")
    boxes = []
    for k, box in enumerate(raw):
        at = f"{where}.grounding_bboxes[{k}]"
        if not isinstance(box, Mapping) or any(key not in box for key in "xywh"):
            raise ValueError(f"{at}: expected {{x, y, w, h}} in pixels, got {box!r}")
        x, y, w, h = (_number(box[key], at) for key in "xywh")
        boxes.append((x, y, w, h))
    return boxes


def _refchart_rows(tables: list[Path], out: Path, skipped: Counter[str]) -> Iterator[ManifestRow]:
    images_dir = out / IMAGES_DIR / "refchartqa"
    seen: dict[str, str] = {}
    for table in tables:
        split = table.name.split("-", 1)[0] if "-" in table.name else table.stem
        for where, record in _refchart_records(table):
            raw_id = text_field(record, "id", where)
            source_boxes = _refchart_boxes(record.get("grounding_bboxes"), where)
            question = text_field(record, "query", where)
            answer = text_field(record, "label", where)
            data, ext = _refchart_image(record.get("image"), where)
            image = _open_rgb(data, f"{where}: column 'image'")
            boxes = [b for b in (xywh_to_corners(*box, *image.size) for box in source_boxes) if b is not None]
            if not boxes:
                skipped["no grounding box inside the chart"] += 1
                continue
            row_id = f"refchartqa-{_UNSAFE.sub('_', split)}-{_UNSAFE.sub('_', raw_id).strip('_')}"
            if row_id in seen:
                raise ValueError(f"{where}: duplicate id {raw_id!r} (first at {seen[row_id]})")
            seen[row_id] = where
            images_dir.mkdir(parents=True, exist_ok=True)
            chart = images_dir / f"{row_id}.{ext}"
            chart.write_bytes(data)
            edit = _save_edit(image, boxes, images_dir / f"{row_id}_edit.png")
            source_info = source_meta("refchartqa", "id", record["id"], record.get("type"))
            yield ManifestRow(
                id=row_id,
                task="chart",
                image=rel_path(chart, out),
                question=question,
                answer=answer,
                edited_image=rel_path(edit, out),
                scorer="auto",  # ChartQA's relaxed accuracy: numbers within 5 %, text normalized-exact
                meta={
                    "boxes": boxes,
                    "source_boxes": [dict(zip("xywh", box, strict=True)) for box in source_boxes],
                    "image_size": list(image.size),
                    "source": source_info | {"split": split, "file": table.name},
                },
            )
    _report("refchartqa", skipped)


def import_refchartqa(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """RefChartQA: the downloaded dataset folder (its ``data/``) or one Parquet file. A folder imports the
    training shards ``train-*.parquet``; name a ``validation-`` or ``test-`` file to import that split.
    ``seed`` is unused: nothing is drawn at random."""
    source, out = Path(source), Path(out)
    tables = _refchart_tables(source)
    return write_rows(out, limited(_refchart_rows(tables, out, Counter()), limit, desc="refchartqa"))


IMPORTERS: Mapping[str, Callable[..., Path]] = MappingProxyType(
    {"vstar-train": import_vstar_train, "refchartqa": import_refchartqa}
)
