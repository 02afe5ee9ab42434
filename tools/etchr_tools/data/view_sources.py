"""Importers of two of the paper's Stage I (SFT) sources: Spatial-SSRL's jigsaw task and DL3DV-10K scenes.

Both read a release as its authors publish it and write ``out/manifest.jsonl`` rows with an ``edited_image``
(the target edit ``etchr train sft`` learns), re-checkable ground truth in ``meta`` and ``meta.source`` like
the benchmark importers (docs/importers.md).

**spatial-ssrl-jigsaw** (task ``jigsaw``). Spatial-SSRL-81k
(huggingface.co/datasets/internlm/Spatial-SSRL-81k) ships its RL set as ``spatialssrl.parquet`` plus
``images.zip`` (unzipped: ``images/{crop,depth,flip,position,shuffle}/``). The layout was checked against the
authors' own readers in github.com/InternLM/Spatial-SSRL: ``training/training.md`` (the files and folders),
EasyR1's ``RLHFDataset`` in ``training/GRPO/verl/utils/dataset.py`` with ``examples/config.yaml`` (columns
``problem`` with an ``<image>`` placeholder, ``answer``, ``images`` = a list of paths),
``data_process/Shuffle.py`` (how the shuffled images are drawn: patches numbered 0… in reading order as
displayed, coloured borders, optionally one patch blanked white; the ground truth is the argsort of the
shuffle) and the paper's Appendix A.2 (arXiv 2510.27606: the question names the answer format,
``'TopLeft-TopRight-BottomLeft-BottomRight'`` for 2x2, ``'Left-Middle1-Middle2-Right'`` for horizontal strips,
and the answer is written ``0-2-3-1``). Only the shuffle task's rows are imported (16,028 in the release); the
other four tasks are skipped. Each row's grid comes from the answer format its question names. The release
stores the shuffled image and the permutation, not the original, so the restored image is made here with
:func:`etchr_tools.data.jigsaw.restore` (the drawn borders and labels move with their patches, as in our own
jigsaw corpus). The question and answer are the jigsaw family's (``jigsaw.open_question``, ``"[0, 2, 3, 1]"``,
scorer ``jigsaw``); the released ones stay in ``meta``.

**dl3dv** (task ``3d``). DL3DV-10K scenes as the dataset ships them: a scene folder with ``transforms.json``
in nerfstudio's layout and frames in ``images/`` and/or its downscaled copies ``images_2/``, ``images_4/``,
``images_8/`` (the 960P download is ``<batch>/<hash>/`` with ``images_4/`` only, as the public loader
github.com/ShuzhaoXie/gsplat_dl3dv ``datasets/dl3dv.py`` reads it; the sample and benchmark releases put the
scene under ``colmap/`` or ``nerfstudio/``). ``transforms.json`` was read as nerfstudio's own dataparser reads
it (``nerfstudio/data/dataparsers/nerfstudio_dataparser.py``): ``frames[].file_path`` relative to the file's
folder, frames sorted by file name, ``frames[].transform_matrix`` camera-to-world in the OpenGL convention (+x
right, +y up, the camera looks along -z), intrinsics ``fl_x, fl_y, cx, cy, w, h`` at the top level or per
frame, and a downscaled folder ``images_<f>/<name>`` standing in for ``file_path``. Two frames of one video
are paired by baseline and rotation; the question asks about the camera motion between them, the first frame
is the input and the second the target edit. The question templates are this project's own (docs/data.md, "3D
question templates (DL3DV)").
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from PIL import Image, UnidentifiedImageError

from etchr.manifest import ManifestRow
from etchr_tools.data import jigsaw
from etchr_tools.data.importing import (
    find_file,
    limited,
    load_json,
    multiple_choice,
    need_file,
    parquet_records,
    rel_path,
    source_meta,
    text_field,
    write_rows,
)

__all__ = ["DL3DV_TEMPLATES", "IMPORTERS", "import_dl3dv", "import_spatial_ssrl_jigsaw"]

_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------- Spatial-SSRL jigsaw

_SSRL_FILES = (
    "spatialssrl.parquet",
    "train.parquet",
    "parquets/train.parquet",
    "data/parquets/train.parquet",
    "spatialssrl.jsonl",
    "spatialssrl.json",
)
_SSRL_COLUMNS = ("problem", "answer", "images")
_SSRL_EXPECTED = "Spatial-SSRL-81k's spatialssrl.parquet (columns problem, answer, images) or a JSON copy"
_SSRL_TASKS = frozenset({"crop", "depth", "flip", "position", "shuffle"})  # images/<task>/… in images.zip
# "…, where the format is 'TopLeft-TopRight-BottomLeft-BottomRight'." (the answer's slot names, in order)
_SSRL_FORMAT = re.compile(r"format\s+is\s*['\"‘“`]\s*([A-Za-z0-9]+(?:\s*-\s*[A-Za-z0-9]+)+)\s*['\"’”`]")
# "The image has been divided into 4 shuffled horizontal strips labeled …" (what the slots are, if unnamed)
_SSRL_DIVIDED = re.compile(r"divided\s+into\s+(\d+)\s+shuffled\s+(patches|(?:horizontal|vertical)\s+strips)")
_SSRL_SHUFFLE_WORDING = re.compile(r"\bshuffled\b.*\brestore\b", re.IGNORECASE | re.DOTALL)
_ROW_WORD = re.compile(r"^(top|bottom|middle\d*)", re.IGNORECASE)
_COL_WORD = re.compile(r"(left|right|middle\d*)$", re.IGNORECASE)


def _ssrl_records(table: Path) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """(row number, where, record) of the Parquet release or a JSON / JSON-lines copy, streamed."""
    if table.suffix == ".parquet":
        for number, record in parquet_records(table, _SSRL_COLUMNS, _SSRL_EXPECTED, batch_size=64):
            yield number, f"{table}[{number}]", record
        return
    if table.suffix == ".jsonl":
        with table.open(encoding="utf-8") as lines:
            number = 0
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{table}:{line_number}: not JSON ({exc}); expected {_SSRL_EXPECTED}"
                    ) from None
                yield number, f"{table}:{line_number}", record
                number += 1
        return
    records = load_json(table, _SSRL_EXPECTED)
    if not isinstance(records, list):
        raise ValueError(f"{table}: expected a JSON list of records; expected {_SSRL_EXPECTED}")
    for number, record in enumerate(records):
        yield number, f"{table}[{number}]", record


def _ssrl_image_entry(record: Mapping[str, Any], where: str) -> tuple[str | None, bytes | None]:
    """The row's one image: its path as stored and, when the table embeds it, its bytes."""
    images = record.get("images") if isinstance(record, Mapping) else None
    if isinstance(images, str | Mapping):
        images = [images]
    if not isinstance(images, list) or len(images) != 1:
        raise ValueError(f"{where}: field 'images' must list exactly one image (a path or {{bytes, path}})")
    image = images[0]
    if isinstance(image, str) and image.strip():
        return image.strip(), None
    if isinstance(image, Mapping):
        data, path = image.get("bytes"), image.get("path")
        path = path.strip() if isinstance(path, str) and path.strip() else None
        if isinstance(data, bytes | bytearray) and data:
            return path, bytes(data)
        if path is not None:
            return path, None
    raise ValueError(f"{where}: field 'images' holds no image path or bytes")


def _ssrl_task_folder(path: str | None) -> str | None:
    """The task folder an image path names (``images/shuffle/x.jpg`` → ``shuffle``), if any."""
    if path is None:
        return None
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return next((part for part in reversed(parts[:-1]) if part in _SSRL_TASKS), None)


def _ssrl_roots(table: Path, source: Path) -> list[Path]:
    """Where image paths may be relative to: the folder given, the table's folder and the folders above it."""
    roots = [source] if source.is_dir() else []
    folder = table.parent
    for _ in range(3):
        if folder not in roots:
            roots.append(folder)
        folder = folder.parent
    return roots


def _ssrl_find_image(path: str, roots: Sequence[Path], where: str) -> Path:
    """The image a stored path names: as written, or relative to a root with or without its leading folders
    (the table may hold ``/data/images/shuffle/x.jpg`` while the zip was unzipped elsewhere)."""
    written = Path(path)
    if written.is_absolute() and written.is_file():
        return written
    parts = PurePosixPath(path.replace("\\", "/")).parts
    parts = parts[1:] if parts and parts[0] == "/" else parts
    for root in roots:
        for start in range(len(parts)):
            tail = Path(*parts[start:])
            for candidate in (root / tail, root / "images" / tail):
                if candidate.is_file():
                    return candidate
    raise ValueError(
        f"{where}: image {path!r} not found under {', '.join(str(r) for r in roots)}; expected images.zip "
        "unzipped beside the table (images/shuffle/…)"
    )


def _slot_grid(slots: Sequence[str]) -> tuple[int, int] | None:
    """Rows and columns named by answer slots in reading order, or ``None`` if they name no known grid."""
    lower = [slot.lower() for slot in slots]
    two_d = [(_ROW_WORD.match(s), _COL_WORD.search(s)) for s in lower]
    if all(row and col and row.end() <= col.start() for row, col in two_d):
        row_words = [row.group(1) for row, _ in two_d]  # type: ignore[union-attr]
        rows = len(dict.fromkeys(row_words))
        cols = len(lower) // rows
        runs = [row_words[k * cols : (k + 1) * cols] for k in range(rows)]
        in_order = all(len(set(run)) == 1 for run in runs)
        if rows * cols == len(lower) and in_order and (lower[0], lower[-1]) == ("topleft", "bottomright"):
            return rows, cols
        return None
    ends = (lower[0], lower[-1])
    if ends == ("left", "right") and all(re.fullmatch(r"left|right|middle\d*", s) for s in lower):
        return 1, len(lower)
    if ends == ("top", "bottom") and all(re.fullmatch(r"top|bottom|middle\d*", s) for s in lower):
        return len(lower), 1
    return None


def _ssrl_grid(question: str, count: int, where: str) -> tuple[int, int]:
    """Rows and columns of the puzzle, from the answer format the question names (Appendix A.2)."""
    found = _SSRL_FORMAT.search(question)
    if found:
        slots = [slot.strip() for slot in found.group(1).split("-")]
        grid = _slot_grid(slots)
        if grid is None:
            raise ValueError(f"{where}: the answer format {found.group(1)!r} names no grid in reading order")
        if len(slots) != count:
            raise ValueError(
                f"{where}: the answer format {found.group(1)!r} has {len(slots)} slots but the answer lists "
                f"{count} patches"
            )
        return grid
    divided = _SSRL_DIVIDED.search(question)
    if divided and int(divided.group(1)) == count:
        kind = divided.group(2).split()[0]
        if kind == "horizontal":  # strips side by side: 'Left-Middle1-…-Right' (Tab. 6, M=1)
            return 1, count
        if kind == "vertical":
            return count, 1
        side = math.isqrt(count)
        if side * side == count:
            return side, side
    raise ValueError(
        f'{where}: cannot tell the grid from the question; expected it to name the answer format ("… the '
        'format is \'TopLeft-TopRight-BottomLeft-BottomRight\'") or to say "divided into N shuffled patches" '
        "(or horizontal / vertical strips)"
    )


def _ssrl_permutation(answer: str, where: str) -> list[int]:
    """``0-2-3-1``: for each restored position in reading order, the displayed patch's label."""
    tokens = re.findall(r"\d+", answer)
    if len(tokens) == 1 and 1 < len(tokens[0]) <= 10:
        tokens = list(tokens[0])  # "0231"
    values = [int(token) for token in tokens]
    if len(values) < 2 or sorted(values) != list(range(len(values))):
        raise ValueError(f"{where}: answer {answer!r} is not a permutation of the patch labels 0…n-1")
    return values


def _ssrl_image(
    path: str | None, data: bytes | None, roots: Sequence[Path], embedded_stem: Path, where: str
) -> tuple[Path, Image.Image]:
    """The shuffled image's file (an embedded one is written to ``embedded_stem.<ext>``) and its pixels."""
    try:
        if data is None and path is not None:
            found = _ssrl_find_image(path, roots, where)
            with Image.open(found) as raw:
                return found, raw.convert("RGB")
        assert data is not None  # _ssrl_image_entry returns a path, bytes or both
        with Image.open(io.BytesIO(data)) as raw:
            pixels, kind = raw.convert("RGB"), (raw.format or "png").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{where}: the image is not readable ({exc})") from None
    suffix = {"jpeg": "jpg"}.get(kind, kind)
    written = embedded_stem.with_name(f"{embedded_stem.name}.{suffix}")
    written.write_bytes(data)
    return written, pixels


def _ssrl_rows(table: Path, source: Path, out: Path) -> Iterator[ManifestRow]:
    roots = _ssrl_roots(table, source)
    images_out = out / "images" / "spatial-ssrl"
    skipped: dict[str, int] = {}
    for number, where, record in _ssrl_records(table):
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: expected a record with {', '.join(_SSRL_COLUMNS)}")
        path, data = _ssrl_image_entry(record, where)
        question = text_field(record, "problem", where)
        folder = _ssrl_task_folder(path)
        if folder != "shuffle" and (folder is not None or not _SSRL_SHUFFLE_WORDING.search(question)):
            skipped[folder or "unnamed"] = skipped.get(folder or "unnamed", 0) + 1
            continue
        answer = text_field(record, "answer", where)
        permutation = _ssrl_permutation(answer, where)
        rows, cols = _ssrl_grid(question.replace("<image>", " "), len(permutation), where)
        row_id = f"spatial-ssrl-{number}"
        images_out.mkdir(parents=True, exist_ok=True)
        image_path, shuffled = _ssrl_image(path, data, roots, images_out / f"{row_id}-input", where)
        if shuffled.width < cols or shuffled.height < rows:
            raise ValueError(
                f"{where}: a {shuffled.width}x{shuffled.height} image cannot hold a {rows}x{cols} grid"
            )
        edited_path = images_out / f"{row_id}.png"
        jigsaw.restore(shuffled, rows, cols, permutation).save(edited_path)
        yield ManifestRow(
            id=row_id,
            task="jigsaw",
            image=rel_path(image_path, out),
            question=jigsaw.open_question(rows, cols),
            answer=jigsaw.format_permutation(permutation),
            edited_image=rel_path(edited_path, out),
            scorer="jigsaw",
            meta={
                "rows": rows,
                "cols": cols,
                "permutation": permutation,
                "original_question": question,
                "original_answer": answer,
                "source": source_meta("spatial-ssrl", "index", number, f"{rows}x{cols}"),
            },
        )
    if skipped:
        _log.info("spatial-ssrl: skipped rows of other tasks: %s", skipped)


def import_spatial_ssrl_jigsaw(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """Spatial-SSRL-81k's shuffled patch reordering rows: ``spatialssrl.parquet`` (or ``parquets/
    train.parquet``, or a JSON/JSON-lines copy) with ``images/shuffle/…`` beside it. ``seed`` is unused:
    nothing is drawn."""
    source, out = Path(source), Path(out)
    table = find_file(source, _SSRL_FILES, _SSRL_EXPECTED)
    rows = limited(_ssrl_rows(table, source, out), limit, desc="spatial-ssrl-jigsaw")
    if not rows:
        raise ValueError(
            f"{table}: no shuffled patch reordering rows (images/shuffle/…); expected {_SSRL_EXPECTED}"
        )
    return write_rows(out, rows)


# -------------------------------------------------------------------------------------------------- DL3DV

Vec = tuple[float, float, float]
Mat = tuple[Vec, Vec, Vec]  # rows

_DL3DV_EXPECTED = (
    "a DL3DV scene folder with transforms.json (nerfstudio layout: frames[].file_path, "
    "frames[].transform_matrix, fl_x, fl_y, cx, cy, w, h) and its frames in images/ or images_2|4|8/"
)
_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_AUTO_MAX_SIDE = 1600  # nerfstudio's MAX_AUTO_RESOLUTION: the auto downscale stops below it
_DOWNSCALES = (2, 4, 8)
_SCENE_DEPTH = 3  # <batch>/<hash>/colmap/transforms.json is the deepest layout released
_SCENE_WRAPPERS = frozenset({"colmap", "nerfstudio"})

# The question templates (docs/data.md, "3D question templates (DL3DV)"). Options are listed in this order.
_PREAMBLE = (
    "This photo is a frame of a video filmed by a camera moving through a scene. Picture the frame the same "
    "camera takes a moment later, from a new position."
)
_MOVES = ("left", "right", "forward", "backward", "up", "down")
_TURNS = ("left", "right", "up", "down")
_SIDES = ("the left side", "the right side", "the top", "the bottom")
_DISTANCE_EDGES = (0.10, 0.25, 0.50)  # fractions of the scene radius
_DISTANCES = (
    "less than 10% of the radius",
    "10% to 25% of the radius",
    "25% to 50% of the radius",
    "more than 50% of the radius",
)
_ANGLE_EDGES = (10.0, 20.0, 35.0, 60.0)  # degrees
_ANGLES = (
    "less than 10 degrees",
    "10 to 20 degrees",
    "20 to 35 degrees",
    "35 to 60 degrees",
    "more than 60 degrees",
)
_STEMS: Mapping[str, str] = MappingProxyType(
    {
        "move-direction": "Between the two frames, which way did the camera mainly move, relative to the "
        "direction it faces in this photo?",
        "move-distance": "Roughly how far did the camera move between the two frames, compared with the "
        "radius of the area the video circles (the typical distance of its camera positions from their "
        "centre)?",
        "turn-direction": "Between the two frames, which way did the camera mainly turn?",
        "turn-angle": "Between the two frames, by about how many degrees did the camera turn in total?",
        "visible-side": "Which side of this photo does the later frame show more of?",
    }
)
DL3DV_TEMPLATES: tuple[str, ...] = tuple(_STEMS)
_MOVE_DOMINANCE = 0.75  # the main axis carries at least this share of the translation's length
_TURN_DOMINANCE = 2.0  # yaw vs pitch: the main one at least twice the other ...
_MIN_TURN = 3.0  # ... and at least this many degrees
_SIDE_DOMINANCE = 1.5  # horizontal vs vertical shift of the view centre
_MIN_SIDE = 0.2  # ... and at least this share of half the image
_ANGLE_MARGIN = 1.5  # degrees either side of a bucket edge where the bucket is too close to call
_DISTANCE_MARGIN = 0.1  # relative margin around a distance edge (0.09-0.11 of the radius for 10 %)


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _sub(a: Vec, b: Vec) -> Vec:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _norm(a: Vec) -> float:
    return math.sqrt(_dot(a, a))


def _columns(m: Mat) -> tuple[Vec, Vec, Vec]:
    return ((m[0][0], m[1][0], m[2][0]), (m[0][1], m[1][1], m[2][1]), (m[0][2], m[1][2], m[2][2]))


def _relative(r1: Mat, r2: Mat) -> Mat:
    """``R1ᵀ R2``: the second camera's axes written in the first camera's frame."""
    c1, c2 = _columns(r1), _columns(r2)
    return tuple(tuple(_dot(c1[a], c2[b]) for b in range(3)) for a in range(3))  # type: ignore[return-value]


def _in_first(r1: Mat, vector: Vec) -> Vec:
    """A world vector in the first camera's frame (``R1ᵀ v``)."""
    c1 = _columns(r1)
    return (_dot(c1[0], vector), _dot(c1[1], vector), _dot(c1[2], vector))


def _angle(rel: Mat) -> float:
    trace = rel[0][0] + rel[1][1] + rel[2][2]
    return math.degrees(math.acos(max(-1.0, min(1.0, (trace - 1.0) / 2.0))))


def _axis(rel: Mat, degrees: float) -> Vec:
    """The unit rotation axis (right-hand rule) of ``rel``; ``(0, 0, 0)`` for no rotation."""
    if degrees < 1e-6:
        return (0.0, 0.0, 0.0)
    raw = (rel[2][1] - rel[1][2], rel[0][2] - rel[2][0], rel[1][0] - rel[0][1])  # 2 sin(angle) * axis
    if degrees >= 179.0:  # the skew part vanishes near 180 degrees: read the axis off the symmetric part
        diag = [math.sqrt(max(0.0, (rel[k][k] + 1.0) / 2.0)) for k in range(3)]
        k = max(range(3), key=lambda i: diag[i])
        big = [diag[k] if j == k else (rel[k][j] + rel[j][k]) / (4.0 * diag[k]) for j in range(3)]
        sign = -1.0 if _dot((big[0], big[1], big[2]), raw) < 0 else 1.0  # keep the skew part's sense
        raw = (sign * big[0], sign * big[1], sign * big[2])
    length = _norm(raw)
    return (raw[0] / length, raw[1] / length, raw[2] / length) if length > 0 else (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class _Frame:
    file_path: str  # as written in transforms.json
    rotation: Mat  # camera-to-world rotation (rows)
    centre: Vec  # camera position in the world
    intrinsics: Mapping[str, float]  # fl_x, fl_y, cx, cy, w, h


@dataclass(frozen=True)
class _Pose:
    """The second camera relative to the first, in the first camera's frame (OpenGL axes)."""

    translation: Vec
    baseline: float  # |translation| / scene radius
    degrees: float
    axis: Vec
    yaw: float  # + = turned left (about the first camera's +y)
    pitch: float  # + = tilted up
    view_centre: tuple[float, float] | None  # the second view's centre in the first image, ±1 = the edges


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: field {key!r} must be a finite number")
    return float(value)


def _matrix(frame: Mapping[str, Any], where: str) -> tuple[Mat, Vec]:
    raw = frame.get("transform_matrix")
    if (
        not isinstance(raw, list)
        or len(raw) not in (3, 4)
        or not all(isinstance(row, list) and len(row) == 4 for row in raw)
    ):
        raise ValueError(f"{where}: field 'transform_matrix' must be a 4x4 (or 3x4) camera-to-world matrix")
    m = [[_number(v, where, "transform_matrix") for v in row] for row in raw]
    rotation: Mat = tuple(tuple(row[:3]) for row in m[:3])  # type: ignore[assignment]
    columns = _columns(rotation)
    for a in range(3):
        for b in range(3):
            if abs(_dot(columns[a], columns[b]) - (1.0 if a == b else 0.0)) > 1e-3:
                raise ValueError(f"{where}: the rotation part of 'transform_matrix' is not orthonormal")
    return rotation, (m[0][3], m[1][3], m[2][3])


def _intrinsics(meta: Mapping[str, Any], frame: Mapping[str, Any], where: str) -> dict[str, float]:
    values = {}
    for key in _INTRINSICS:
        value = frame.get(key, meta.get(key))
        if value is None:
            raise ValueError(f"{where}: intrinsic {key!r} is set neither in the frame nor at the top level")
        values[key] = _number(value, where, key)
        if key in ("fl_x", "fl_y", "w", "h") and values[key] <= 0:
            raise ValueError(f"{where}: intrinsic {key!r} must be positive")
    return values


def _read_scene(transforms: Path) -> list[_Frame]:
    meta = load_json(transforms, _DL3DV_EXPECTED)
    frames = meta.get("frames") if isinstance(meta, Mapping) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{transforms}: no 'frames' list; expected {_DL3DV_EXPECTED}")
    read = []
    for number, frame in enumerate(frames):
        where = f"{transforms}: frames[{number}]"
        if not isinstance(frame, Mapping):
            raise ValueError(f"{where}: expected an object with file_path and transform_matrix")
        file_path = text_field(frame, "file_path", where)
        rotation, centre = _matrix(frame, where)
        read.append(_Frame(file_path, rotation, centre, _intrinsics(meta, frame, where)))
    return sorted(read, key=lambda frame: PurePosixPath(frame.file_path).name)  # nerfstudio sorts by name


def _image_folder(scene: Path, frame: _Frame, downscale: int | None) -> Callable[[_Frame], Path]:
    """How a frame's ``file_path`` maps to an image file, chosen once per scene as nerfstudio does."""

    def written(f: _Frame) -> Path:
        return scene / f.file_path

    def scaled(factor: int) -> Callable[[_Frame], Path]:
        return lambda f: scene / f"images_{factor}" / PurePosixPath(f.file_path).name

    if downscale is not None:
        return written if downscale == 1 else scaled(downscale)
    first = written(frame)
    if first.is_file():  # halve while the long side is >= 1600 px and a smaller copy exists
        try:
            with Image.open(first) as image:
                side = max(image.size)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{first}: not a readable image ({exc})") from None
        factor = 1
        while side / factor >= _AUTO_MAX_SIDE and scaled(factor * 2)(frame).is_file():
            factor *= 2
        return written if factor == 1 else scaled(factor)
    for factor in _DOWNSCALES:  # the 960P/480P releases keep only a downscaled folder
        if scaled(factor)(frame).is_file():
            return scaled(factor)
    raise ValueError(
        f"{scene}: frame {frame.file_path!r} is in none of {frame.file_path}, "
        + ", ".join(f"images_{f}/" for f in _DOWNSCALES)
        + f"; expected {_DL3DV_EXPECTED}"
    )


def _scene_radius(frames: Sequence[_Frame]) -> float:
    """The median distance of the camera positions from their centroid: the scene's length unit."""
    count = len(frames)
    centroid = tuple(sum(f.centre[k] for f in frames) / count for k in range(3))
    distances = sorted(_norm(_sub(f.centre, centroid)) for f in frames)  # type: ignore[arg-type]
    middle = count // 2
    return distances[middle] if count % 2 else (distances[middle - 1] + distances[middle]) / 2.0


def _pose(first: _Frame, second: _Frame, radius: float) -> _Pose:
    rel = _relative(first.rotation, second.rotation)
    translation = _in_first(first.rotation, _sub(second.centre, first.centre))
    degrees = _angle(rel)
    forward = (-rel[0][2], -rel[1][2], -rel[2][2])  # the second camera's -z in the first camera's frame
    yaw = math.degrees(math.atan2(-forward[0], -forward[2]))
    pitch = math.degrees(math.atan2(forward[1], math.hypot(forward[0], forward[2])))
    # Where the second view looks: a point one scene radius ahead of the second camera, seen from the first.
    point = tuple(translation[k] + radius * forward[k] for k in range(3))
    view_centre = None
    if -point[2] > 1e-9 * max(radius, 1e-12):
        k = first.intrinsics
        u = (k["cx"] - k["w"] / 2 + k["fl_x"] * point[0] / -point[2]) / (k["w"] / 2)
        v = (k["h"] / 2 - k["cy"] + k["fl_y"] * point[1] / -point[2]) / (k["h"] / 2)
        view_centre = (u, v)
    return _Pose(
        translation, _norm(translation) / radius, degrees, _axis(rel, degrees), yaw, pitch, view_centre
    )


def _bucket(value: float, edges: Sequence[float], margin: Callable[[float], float]) -> int | None:
    """The bucket ``value`` falls in, or ``None`` when it lies within ``margin(edge)`` of an edge."""
    if any(abs(value - edge) < margin(edge) for edge in edges):
        return None
    return sum(value >= edge for edge in edges)


def _answer(template: str, pose: _Pose) -> tuple[Sequence[str], int] | None:
    """The options and the index of the right one, or ``None`` when the pose does not settle the template."""
    if template == "move-direction":
        x, y, z = pose.translation
        length = _norm(pose.translation)
        axis = max(range(3), key=lambda k: abs(pose.translation[k]))
        if length == 0 or abs(pose.translation[axis]) < _MOVE_DOMINANCE * length:
            return None
        index = {0: 0 if x < 0 else 1, 1: 4 if y > 0 else 5, 2: 2 if z < 0 else 3}[axis]
        return _MOVES, index
    if template == "move-distance":
        index = _bucket(pose.baseline, _DISTANCE_EDGES, lambda edge: _DISTANCE_MARGIN * edge)
        return None if index is None else (_DISTANCES, index)
    if template == "turn-direction":
        yaw, pitch = abs(pose.yaw), abs(pose.pitch)
        if max(yaw, pitch) < _MIN_TURN or max(yaw, pitch) < _TURN_DOMINANCE * min(yaw, pitch):
            return None
        if yaw > pitch:
            return _TURNS, 0 if pose.yaw > 0 else 1
        return _TURNS, 2 if pose.pitch > 0 else 3
    if template == "turn-angle":
        index = _bucket(pose.degrees, _ANGLE_EDGES, lambda edge: _ANGLE_MARGIN)
        return None if index is None else (_ANGLES, index)
    if template == "visible-side":
        if pose.view_centre is None:
            return None
        u, v = pose.view_centre
        if max(abs(u), abs(v)) < _MIN_SIDE or max(abs(u), abs(v)) < _SIDE_DOMINANCE * min(abs(u), abs(v)):
            return None
        if abs(u) > abs(v):
            return _SIDES, 0 if u < 0 else 1
        return _SIDES, 2 if v > 0 else 3
    raise ValueError(f"unknown DL3DV template {template!r}; known: {', '.join(DL3DV_TEMPLATES)}")


def _find_scenes(source: Path) -> list[Path]:
    """The ``transforms.json`` files at ``source`` or up to three folders below it, in path order. A folder
    holding one is a scene and is not searched further; frame folders (``images*``) are never listed."""
    if source.is_file():
        if source.suffix == ".json":
            return [source]
        raise ValueError(f"{source}: not a transforms.json; expected {_DL3DV_EXPECTED}")
    if not source.is_dir():
        raise ValueError(f"{source}: not found; expected {_DL3DV_EXPECTED}")
    found, frontier = [], [source]
    for depth in range(_SCENE_DEPTH + 1):
        deeper = []
        for folder in frontier:
            if (folder / "transforms.json").is_file():
                found.append(folder / "transforms.json")
            elif depth < _SCENE_DEPTH:
                deeper.extend(
                    sub
                    for sub in folder.iterdir()
                    if sub.is_dir() and not sub.name.startswith(("images", "."))
                )
        frontier = sorted(deeper)
    if not found:
        raise ValueError(
            f"{source}: no transforms.json here or up to {_SCENE_DEPTH} folders below; "
            f"expected {_DL3DV_EXPECTED}"
        )
    return sorted(found)


def _scene_id(transforms: Path, source: Path) -> tuple[str, str]:
    """The scene's name as found (``1K/<hash>`` under a release root) and its own folder name (``<hash>``),
    a ``colmap``/``nerfstudio`` wrapper folder (sample and benchmark releases) left out of both."""
    scene = transforms.parent
    if scene.name in _SCENE_WRAPPERS:
        scene = scene.parent
    own = scene.resolve().name
    base = (source if source.is_dir() else source.parent).resolve()
    try:
        name = scene.resolve().relative_to(base).as_posix()
    except ValueError:
        name = own
    return (own if name in ("", ".") else name), own


def _range(value: Sequence[float], name: str, high: float) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {value!r}")
    low, top = float(value[0]), float(value[1])
    if not (0.0 <= low <= top <= high):
        raise ValueError(f"{name} must satisfy 0 <= min <= max <= {high:g}, got {value!r}")
    return low, top


def _rounded(values: Iterable[float], digits: int = 6) -> list[float]:
    return [round(v, digits) + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0


def _dl3dv_rows(
    source: Path,
    out: Path,
    *,
    seed: int,
    baseline: tuple[float, float],
    rotation: tuple[float, float],
    pairs_per_scene: int,
    templates: Sequence[str],
    downscale: int | None,
) -> Iterator[ManifestRow]:
    for transforms in _find_scenes(source):
        scene_id, scene_name = _scene_id(transforms, source)
        frames = _read_scene(transforms)
        radius = _scene_radius(frames) if len(frames) > 1 else 0.0
        if radius <= 0:
            _log.info("dl3dv: %s has no camera motion, skipped", scene_id)
            continue
        candidates = []
        for i in range(len(frames)):
            for j in range(i + 1, len(frames)):
                spread = _norm(_sub(frames[j].centre, frames[i].centre)) / radius
                if not baseline[0] <= spread <= baseline[1]:
                    continue
                degrees = _angle(_relative(frames[i].rotation, frames[j].rotation))
                if rotation[0] <= degrees <= rotation[1]:
                    candidates.append((i, j))
        rng = random.Random(f"dl3dv:{seed}:{scene_name}")  # the same draw however the source is given
        rng.shuffle(candidates)
        chosen: list[tuple[int, int, str, Sequence[str], int, _Pose]] = []
        for i, j in candidates:
            if len(chosen) == pairs_per_scene:
                break
            pose = _pose(frames[i], frames[j], radius)
            settled = [(t, found) for t in templates if (found := _answer(t, pose)) is not None]
            if settled:
                template, (options, index) = rng.choice(settled)
                chosen.append((i, j, template, options, index, pose))
        if not chosen:
            _log.info("dl3dv: %s has no frame pair in the baseline and rotation ranges", scene_id)
            continue
        image_of = _image_folder(transforms.parent, frames[chosen[0][0]], downscale)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", scene_id)
        for i, j, template, options, index, pose in sorted(chosen, key=lambda c: (c[0], c[1])):
            first = need_file(image_of(frames[i]), f"frame {frames[i].file_path!r} of {transforms}")
            second = need_file(image_of(frames[j]), f"frame {frames[j].file_path!r} of {transforms}")
            question, choices = multiple_choice(f"{_PREAMBLE} {_STEMS[template]}", list(options))
            meta: dict[str, Any] = {
                "choices": choices,
                "template": template,
                "scene": scene_id,
                "frames": [rel_path(first, out), rel_path(second, out)],
                "frame_files": [frames[i].file_path, frames[j].file_path],
                "frame_indices": [i, j],
                "rotation": {
                    "degrees": round(pose.degrees, 4),
                    "axis": _rounded(pose.axis),
                    "yaw": round(pose.yaw, 4) + 0.0,
                    "pitch": round(pose.pitch, 4) + 0.0,
                },
                "translation": _rounded(pose.translation),
                "scene_radius": round(radius, 6),
                "baseline": round(pose.baseline, 6),
                "view_centre": None if pose.view_centre is None else _rounded(pose.view_centre, 4),
                "frame_convention": "first camera, OpenGL axes: +x right, +y up, the camera looks along -z",
                "source": source_meta("dl3dv", "id", f"{scene_id}:{i}-{j}", template),
            }
            yield ManifestRow(
                id=f"dl3dv-{slug}-{i:05d}-{j:05d}",
                task="3d",
                image=rel_path(first, out),
                question=question,
                answer=list(choices)[index],
                edited_image=rel_path(second, out),
                scorer="option",
                meta=meta,
            )


def import_dl3dv(
    source: Path,
    out: Path,
    *,
    seed: int = 0,
    limit: int | None = None,
    baseline: Sequence[float] = (0.05, 0.6),
    rotation: Sequence[float] = (5.0, 60.0),
    pairs_per_scene: int = 8,
    templates: Sequence[str] = DL3DV_TEMPLATES,
    downscale: int | None = None,
) -> Path:
    """DL3DV-10K: a scene folder with ``transforms.json`` (or a folder of scenes, up to three levels deep).

    Per scene, up to ``pairs_per_scene`` frame pairs (earlier, later) whose baseline, in scene radii (the
    median distance of the camera positions from their centroid), lies in ``baseline`` and whose relative
    rotation, in degrees, lies in ``rotation``; drawn by ``seed`` (reproducibly, independent of ``limit`` and
    of the other scenes), one template per pair among ``templates`` that the pose settles. ``downscale``
    picks ``images_<f>/`` (1: the paths as written); by default the folder nerfstudio would choose.
    """
    low_baseline = _range(baseline, "baseline", math.inf)
    low_rotation = _range(rotation, "rotation", 180.0)
    if type(pairs_per_scene) is not int or pairs_per_scene < 1:
        raise ValueError(f"pairs_per_scene must be an int >= 1, got {pairs_per_scene!r}")
    if isinstance(templates, str):  # one template named alone (`-o templates=turn-angle`)
        templates = (templates,)
    unknown = [t for t in templates if t not in _STEMS]
    if unknown or not templates:
        raise ValueError(f"templates must be some of {', '.join(DL3DV_TEMPLATES)}, got {templates!r}")
    if downscale is not None and (type(downscale) is not int or downscale < 1):
        raise ValueError(f"downscale must be an int >= 1 or None, got {downscale!r}")
    source, out = Path(source), Path(out)
    rows = _dl3dv_rows(
        source,
        out,
        seed=seed,
        baseline=low_baseline,
        rotation=low_rotation,
        pairs_per_scene=pairs_per_scene,
        templates=tuple(dict.fromkeys(templates)),
        downscale=downscale,
    )
    imported = limited(rows, limit, desc="dl3dv")
    if not imported:
        raise ValueError(
            f"{source}: no frame pair with a baseline in {list(baseline)} scene radii and a rotation in "
            f"{list(rotation)} degrees that the templates {', '.join(templates)} can ask about"
        )
    return write_rows(out, imported)


IMPORTERS: Mapping[str, Callable[..., Path]] = MappingProxyType(
    {"spatial-ssrl-jigsaw": import_spatial_ssrl_jigsaw, "dl3dv": import_dl3dv}
)
