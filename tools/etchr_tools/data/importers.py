"""Importers: public benchmarks, as their authors release them, turned into manifests (docs/importers.md).

The benchmarks cannot be redistributed with the project, so users download them themselves and point an
importer at the files. Each importer reads one benchmark's released format and writes ``out/manifest.jsonl``
whose rows the eval harness scores like any generated corpus: multiple-choice questions get their options
appended as ``(A) …`` lines, ``answer`` = the letter, ``scorer="option"`` and ``meta.choices``; open answers
use ``scorer="auto"``. Every row keeps ``meta.source`` = ``{"benchmark", "index" or "id", "category"}`` so
results can be grouped the way each paper reports them. Formats and choices: docs/importers.md.

Images are referenced where they lie (paths relative to the manifest) or, when a format embeds them
(HR-Bench's base64 TSV column), decoded into ``out/images/``. A missing or malformed input raises
:class:`ValueError` naming the file and what was expected, before the manifest is written.
"""

from __future__ import annotations

import base64
import binascii
import csv
import inspect
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image, UnidentifiedImageError

from etchr.manifest import ManifestRow
from etchr_tools.data import box_sources, view_sources
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
from etchr_tools.data.samples import OPTION_LETTERS

__all__ = ["BENCHMARKS", "IMPORTERS", "SFT_SOURCES", "import_benchmark"]

# "(A) white" options inside V*'s released question text; an option ends at the next label or line end.
_PAREN_OPTION = re.compile(r"\(([A-H])\)\s*(.*?)\s*(?=\([A-H]\)|\n|$)", re.DOTALL)
# "A. left" / "(A) left" / "A) left" option lines and answers (ViewSpatial).
_LABELLED = re.compile(r"^\s*\(?([A-H])[).:]\s*(.*?)\s*$")
_LETTER_ONLY = re.compile(r"^\s*\(?([A-H])\)?\s*\.?\s*$")
_TSV_FIELD_LIMIT = 2**31 - 1  # HR-Bench's base64 images are far larger than csv's 128 KiB default
_IMAGE_REF_MAX = 64  # TSVs of this family store a repeated image as the index of the row holding it
_CHARXIV_CATEGORIES: Mapping[int, str] = MappingProxyType(
    {1: "text-in-chart", 2: "text-in-general", 3: "number-in-chart", 4: "number-in-general"}
)


# ----------------------------------------------------------------------------------------------- V*Bench


def _vstar_rows(questions: Path, out: Path, seed: int) -> Iterable[ManifestRow]:
    expected = 'JSON lines with "image", "text" (question and "(A) …" options), "label" and "category"'
    with questions.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{questions}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc}); expected {expected}") from None
            text = text_field(record, "text", where)
            found = list(_PAREN_OPTION.finditer(text))
            letters = "".join(match.group(1) for match in found)
            if len(found) < 2 or letters != OPTION_LETTERS[: len(found)]:
                raise ValueError(f"{where}: field 'text' has no '(A) … (B) …' options; expected {expected}")
            options = [match.group(2) for match in found]
            label = text_field(record, "label", where).strip("() .").upper()
            if label not in letters:
                raise ValueError(f"{where}: label {label!r} is not one of the options {', '.join(letters)}")
            image = questions.parent / text_field(record, "image", where)
            need_file(image, f"the image named by {where}")
            index = record.get("question_id", number - 1)
            # The released files list the right option first; a fixed per-question shuffle (independent of
            # `limit` and row order) keeps position bias from inflating scores, reproducibly per seed.
            order = list(range(len(options)))
            random.Random(f"vstar:{seed}:{index}").shuffle(order)
            question, choices = multiple_choice(text[: found[0].start()], [options[i] for i in order])
            yield ManifestRow(
                id=f"vstar-{index}",
                task="perception",
                image=rel_path(image, out),
                question=question,
                answer=OPTION_LETTERS[order.index(letters.index(label))],
                scorer="option",
                meta={
                    "choices": choices,
                    "original_choices": dict(zip(letters, options, strict=True)),
                    "original_answer": label,
                    "shuffle_seed": seed,
                    "source": source_meta("vstar", "index", index, record.get("category")),
                },
            )


def import_vstar(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """V*Bench: ``test_questions.jsonl`` with images in per-category folders beside it."""
    questions = find_file(Path(source), ["test_questions.jsonl"], "V*Bench's test_questions.jsonl")
    return write_rows(out, limited(_vstar_rows(questions, Path(out), seed), limit))


# ---------------------------------------------------------------------------------------------- HR-Bench


def _decode_image(data: str, where: str) -> tuple[bytes, str]:
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            kind = (image.format or "png").lower()
    except (binascii.Error, ValueError, UnidentifiedImageError):
        raise ValueError(f"{where}: column 'image' is not a base64-encoded image") from None
    return raw, {"jpeg": "jpg"}.get(kind, kind)


_HRBENCH_COLUMNS = ("index", "question", "A", "B", "answer", "image")


def _hrbench_records(table: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of a TSV or Parquet release, streamed (the 8K images run to gigabytes)."""
    expected = "index, question, A, B, C, D, answer, category, cycle_category, image (base64)"
    if table.suffix == ".parquet":
        for number, record in parquet_records(
            table, _HRBENCH_COLUMNS, expected, optional=None, batch_size=16
        ):
            yield f"{table}[{number}]", {k: _as_text(v) for k, v in record.items()}
        return
    previous = csv.field_size_limit(_TSV_FIELD_LIMIT)
    try:
        with table.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [column for column in _HRBENCH_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{table}: missing column(s) {', '.join(missing)}; expected a TSV with {expected}"
                )
            for number, record in enumerate(reader, start=2):
                yield f"{table}:{number}", record
    finally:
        csv.field_size_limit(previous)


def _as_text(value: Any) -> Any:
    """Parquet cells: base64 images may be stored as bytes; numbers as numbers. The TSV path sees text."""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    return value if value is None or isinstance(value, str) else str(value)


def _hrbench_rows(table: Path, out: Path) -> Iterable[ManifestRow]:
    images_dir = out / "images" / "hrbench"
    saved: dict[str, Path] = {}
    for where, record in _hrbench_records(table):
        index = text_field(record, "index", where)
        options = []
        for letter in OPTION_LETTERS:
            value = (record.get(letter) or "").strip()
            if not value:
                break
            options.append(value)
        answer = text_field(record, "answer", where).strip("() .").upper()
        if answer not in OPTION_LETTERS[: len(options)]:
            raise ValueError(f"{where}: answer {answer!r} is not one of the options A-D")
        data = text_field(record, "image", where)
        if len(data) <= _IMAGE_REF_MAX and data in saved:
            path = saved[data]  # a repeated image, stored as the index of its first row
        else:
            raw, ext = _decode_image(data, where)
            images_dir.mkdir(parents=True, exist_ok=True)
            path = images_dir / f"{table.stem}_{index}.{ext}"
            path.write_bytes(raw)
        saved[index] = path
        question, choices = multiple_choice(text_field(record, "question", where), options)
        source = source_meta("hrbench", "index", index, record.get("category"))
        source |= {"cycle_category": record.get("cycle_category"), "file": table.stem}
        yield ManifestRow(
            id=f"hrbench-{table.stem}-{index}",
            task="perception",
            image=rel_path(path, out),
            question=question,
            answer=answer,
            scorer="option",
            meta={"choices": choices, "source": source},
        )


def import_hrbench(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """HR-Bench: a TSV or Parquet file (``hr_bench_4k``, ``hr_bench_8k``), a folder of them, or its ``data/``.

    Images are base64 in the ``image`` column.

    The released options are already balanced over letters (``cycle_category``), so they are kept as is.
    """
    source, out = Path(source), Path(out)
    if source.is_file():
        tables = [source]
    elif source.is_dir():
        tables = [
            t
            for folder in (source, source / "data")
            for pattern in ("*.tsv", "*.parquet")
            for t in sorted(folder.glob(pattern))
        ]
    else:
        tables = []
    if not tables:
        raise ValueError(
            f"{source}: no .tsv or .parquet found; expected HR-Bench's hr_bench_4k / hr_bench_8k"
        )

    def rows() -> Iterable[ManifestRow]:
        for table in tables:
            yield from _hrbench_rows(table, out)

    return write_rows(out, limited(rows(), limit))


# ----------------------------------------------------------------------------------------------- ChartQA


def _chartqa_rows(files: list[Path], out: Path) -> Iterable[ManifestRow]:
    expected = 'a JSON list of {"imgname", "query", "label"}'
    for path in files:
        records = load_json(path, expected)
        if not isinstance(records, list):
            raise ValueError(f"{path}: not a JSON list; expected {expected}")
        category = path.stem.split("_", 1)[-1]  # test_human.json -> "human", test_augmented -> "augmented"
        for i, record in enumerate(records):
            where = f"{path}[{i}]"
            image = path.parent / "png" / text_field(record, "imgname", where)
            need_file(image, f"the chart named by {where} (ChartQA keeps them in png/ beside the JSON)")
            yield ManifestRow(
                id=f"chartqa-{path.stem}-{i}",
                task="chart",
                image=rel_path(image, out),
                question=text_field(record, "query", where),
                answer=text_field(record, "label", where),
                scorer="auto",  # numbers within 5 % (ChartQA's relaxed accuracy), text normalized-exact
                meta={"source": source_meta("chartqa", "index", i, category)},
            )


def import_chartqa(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """ChartQA: ``test_human.json`` and ``test_augmented.json`` (or one JSON file) with charts in ``png/``."""
    source = Path(source)
    if source.is_file():
        files = [source]
    else:
        names = ("test_human.json", "test_augmented.json")
        folder = next((d for d in (source, source / "test") if any((d / n).is_file() for n in names)), None)
        if folder is None:
            raise ValueError(f"{source}: no test_human.json / test_augmented.json found (in it or test/)")
        files = [folder / name for name in names if (folder / name).is_file()]
    return write_rows(out, limited(_chartqa_rows(files, Path(out)), limit))


# ----------------------------------------------------------------------------------------------- CharXiv


def _charxiv_records(
    questions: Path, images: Path, expected: str, answers: str, other: tuple[str, str]
) -> Iterator[tuple[str, dict[str, Any], str, str, Path]]:
    """(key, record, where, figure id, figure) of a reasoning or descriptive file. ``answers`` is the file's
    answer field; ``other`` = (a field only the other file has, what to say then). The test split is refused
    (its answers are not public)."""
    records = load_json(questions, expected)
    if not isinstance(records, dict):
        raise ValueError(f"{questions}: not a JSON object; expected {expected}")
    for key, record in records.items():
        where = f"{questions}[{key!r}]"
        if isinstance(record, dict) and other[0] in record:
            raise ValueError(f"{where}: {other[1]}")
        if not isinstance(record, dict) or answers not in record:
            raise ValueError(
                f"{where}: no {answers!r} (CharXiv's test answers are not public; use the val split)"
            )
        figure = text_field(record, "figure_id", where)
        image = need_file(images / f"{figure}.jpg", f"CharXiv figure {figure}.jpg for {where}")
        yield key, record, where, figure, image


def _charxiv_rows(questions: Path, images: Path, out: Path) -> Iterable[ManifestRow]:
    expected = 'a JSON object keyed by question id of {"figure_id", "query", "answer", "inst_category", …}'
    other = ("qids", "a descriptive question set; import it as 'charxiv-descriptive'")
    for key, record, where, _, image in _charxiv_records(questions, images, expected, "answer", other):
        category = record.get("inst_category")
        meta = {
            "figure_id": record.get("figure_id"),
            "qa_source": record.get("qa_source"),
            "source": source_meta("charxiv", "id", key, _CHARXIV_CATEGORIES.get(category, category)),
        }
        yield ManifestRow(
            id=f"charxiv-{questions.stem}-{key}",
            task="chart",
            image=rel_path(image, out),
            question=text_field(record, "query", where),
            answer=text_field(record, "answer", where),
            scorer="auto",
            meta=meta,
        )


def import_charxiv(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """CharXiv reasoning questions: ``reasoning_val.json`` (in the folder or ``data/``) and ``images/``."""
    return _import_charxiv(Path(source), Path(out), limit, "reasoning_val.json", _charxiv_rows)


def _import_charxiv(
    source: Path,
    out: Path,
    limit: int | None,
    name: str,
    rows: Callable[[Path, Path, Path], Iterable[ManifestRow]],
) -> Path:
    """Either CharXiv file: ``name`` in the folder or its ``data/``; the release keeps figures in ``images/``
    beside ``data/``, and users may also put them next to the JSON."""
    questions = find_file(source, (name, f"data/{name}"), f"CharXiv's {name}")
    candidates = [questions.parent / "images", questions.parent.parent / "images", source / "images"]
    images = next((d for d in candidates if d.is_dir()), None)
    if images is None:
        raise ValueError(f"{questions.parent}: no images/ folder found; expected CharXiv's <figure_id>.jpg")
    return write_rows(out, limited(rows(questions, images, out), limit))


# CharXiv's descriptive questions come from 19 templates (the file stores only template ids), asked about one
# subplot: (category, question). The wording is ours; the asks and their answer conventions follow the
# benchmark's templates ("Not Applicable" when the plot has no such element). "{where}" becomes the subplot.
_CHARXIV_DESCRIPTIVE: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        1: (
            "title",
            "{where}what is its title? Give the title exactly as it is written. If the plot has no explicit "
            "title, or only a letter, answer 'Not Applicable'.",
        ),
        2: (
            "x-axis label",
            "{where}what is the label of the x-axis? Give it as written; a label shared by several subplots "
            "counts, and if there are x-axes at the top and bottom, use the bottom one. If there is no "
            "explicit x-axis label, answer 'Not Applicable'.",
        ),
        3: (
            "y-axis label",
            "{where}what is the label of the y-axis? Give it as written; a label shared by several subplots "
            "counts, and if there are y-axes on the left and right, use the left one. If there is no "
            "explicit y-axis label, answer 'Not Applicable'.",
        ),
        4: ("leftmost x tick", "{where}what is the leftmost labeled tick on the x-axis?{x_tick}"),
        5: ("rightmost x tick", "{where}what is the rightmost labeled tick on the x-axis?{x_tick}"),
        6: ("lowest y tick", "{where}what is the spatially lowest labeled tick on the y-axis?{y_tick}"),
        7: ("highest y tick", "{where}what is the spatially highest labeled tick on the y-axis?{y_tick}"),
        8: (
            "x tick step",
            "{where}what is the difference between consecutive numerical tick values on the x-axis?{x_tick} "
            "If the ticks are not explicit, not numerical or not evenly spaced, answer 'Not Applicable'.",
        ),
        9: (
            "y tick step",
            "{where}what is the difference between consecutive numerical tick values on the y-axis?{y_tick} "
            "If the ticks are not explicit, not numerical or not evenly spaced, answer 'Not Applicable'.",
        ),
        10: (
            "line count",
            "{where}how many lines are there? Ignore grid lines, tick marks and vertical or horizontal "
            "auxiliary lines. If it is not a line plot, answer 'Not Applicable'.",
        ),
        11: (
            "lines intersect",
            "{where}do any lines intersect? Answer 'Yes' or 'No', ignoring grid lines, tick marks and "
            "vertical or horizontal auxiliary lines. If it is not a line plot, answer 'Not Applicable'.",
        ),
        12: (
            "legend count",
            "{where}how many discrete labels are there in the legend? Count only the labels relevant to this "
            "plot, even if the legend lies outside it. If there is no relevant legend, answer "
            "'Not Applicable'.",
        ),
        13: (
            "legend labels",
            "{where}what are the names of the labels in the legend? List them from top to bottom, then left "
            "to right, separated by commas, counting only labels relevant to this plot. If there is no "
            "relevant legend, answer 'Not Applicable'.",
        ),
        14: (
            "colorbar range",
            "{where}what is the difference between the maximum and minimum tick labels of the continuous "
            "legend (colorbar)? Leave out any percent sign. If there is no relevant colorbar, answer "
            "'Not Applicable'.",
        ),
        15: (
            "colorbar max",
            "{where}what is the maximum tick label of the continuous legend (colorbar)? Leave out any "
            "percent sign. If there is no relevant colorbar, answer 'Not Applicable'.",
        ),
        16: (
            "trend",
            "{where}what is the general trend of the data from left to right? Answer in a few words, such as "
            "'increases' or 'increases then stabilizes'.",
        ),
        17: (
            "tick count",
            "{where}what is the total number of explicitly labeled ticks across all axes, counting axes "
            "shared by several subplots?",
        ),
        18: (
            "layout",
            "What is the layout of the subplots? Answer 'n by m' with n rows and m columns; a plot without "
            "subplots is '1 by 1'.",
        ),
        19: ("subplot count", "How many subplots are there? A plot without subplots counts as 1."),
    }
)
_TICK_NOTE = (
    " Give the tick value as written; an axis shared by several subplots counts, and if there are {axes}, "
    "use the {side} one. Leave out units or scales written apart from the tick (in the axis label or a "
    "corner)."
)
_X_TICK = _TICK_NOTE.format(axes="x-axes at the top and bottom", side="bottom")
_Y_TICK = _TICK_NOTE.format(axes="y-axes on the left and right", side="left")
# "rises then plateaus" means "increases then stabilizes": only a judge can tell
_CHARXIV_JUDGED = frozenset({16})


def _charxiv_where(subplot: Any, where: str) -> str:
    """The question's subject: the whole plot, the subplot at a grid cell, or a subplot named in words."""
    if isinstance(subplot, str) and subplot.strip():
        return f"For {subplot.strip()}, "
    if (
        isinstance(subplot, list)
        and len(subplot) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in subplot)
    ):
        if subplot[0] == 0:
            return "For the current plot, "
        return f"For the subplot at row {subplot[0]} and column {subplot[1]}, "
    raise ValueError(f"{where}: field 'subplot_loc' must be [row, column] or a description, got {subplot!r}")


def _charxiv_descriptive_rows(questions: Path, images: Path, out: Path) -> Iterable[ManifestRow]:
    expected = 'a JSON object keyed by figure id of {"figure_id", "subplot_loc", "qids", "answers"}'
    other = ("query", "a reasoning question; import it as 'charxiv'")
    for _, record, where, figure, image in _charxiv_records(questions, images, expected, "answers", other):
        qids, answers = record.get("qids"), record.get("answers")
        if not isinstance(qids, list) or not isinstance(answers, list) or len(qids) != len(answers):
            raise ValueError(f"{where}: 'qids' and 'answers' must be lists of the same length")
        subject = _charxiv_where(record.get("subplot_loc"), where)
        for i, (qid, answer) in enumerate(zip(qids, answers, strict=True)):
            template = _CHARXIV_DESCRIPTIVE.get(qid) if isinstance(qid, int) else None
            if template is None:
                raise ValueError(f"{where}: template id {qid!r} is not one of CharXiv's 1-19")
            category, wording = template
            yield ManifestRow(
                id=f"charxiv-descriptive-{figure}-{i}",
                task="chart",
                image=rel_path(image, out),
                question=wording.format(where=subject, x_tick=_X_TICK, y_tick=_Y_TICK),
                answer=text_field({"answer": answer}, "answer", f"{where} answer {i}"),
                scorer="judge" if qid in _CHARXIV_JUDGED else "auto",
                meta={
                    "figure_id": record.get("figure_id"),
                    "template": qid,
                    "subplot_loc": record.get("subplot_loc"),
                    "rel_tol": 0,  # descriptive answers are graded on exact values (ticks, counts)
                    # the official response key, so results can be graded by the benchmark's own scripts
                    "source": source_meta("charxiv", "id", f"{figure}_{i}", category),
                },
            )


def import_charxiv_descriptive(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """CharXiv descriptive questions: ``descriptive_val.json`` (in the folder or ``data/``), ``images/``."""
    return _import_charxiv(Path(source), Path(out), limit, "descriptive_val.json", _charxiv_descriptive_rows)


# ------------------------------------------------------------------------------------- ViewSpatial-Bench


def _viewspatial_options(raw: Any, where: str) -> list[str]:
    lines = raw.splitlines() if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if not lines:
        raise ValueError(f"{where}: field 'choices' must be 'A. …' lines or a list")
    options = []
    for i, line in enumerate(str(line) for line in lines if str(line).strip()):
        labelled = _LABELLED.match(line)
        if labelled and labelled.group(1) != OPTION_LETTERS[i]:
            raise ValueError(f"{where}: choice {line!r} is out of order (expected label {OPTION_LETTERS[i]})")
        options.append(labelled.group(2) if labelled else line.strip())
    if len(options) < 2:
        raise ValueError(f"{where}: fewer than two choices")
    return options


def _viewspatial_answer(raw: str, options: list[str], where: str) -> str:
    """The letter of an answer given as "A. right", "A" or the option text."""
    labelled = _LABELLED.match(raw) or _LETTER_ONLY.match(raw)
    if labelled and labelled.group(1) in OPTION_LETTERS[: len(options)]:
        return labelled.group(1)
    by_text = [i for i, option in enumerate(options) if option.casefold() == raw.strip().casefold()]
    if len(by_text) == 1:
        return OPTION_LETTERS[by_text[0]]
    raise ValueError(f"{where}: answer {raw!r} names none of the choices")


def _viewspatial_image(path: str, roots: list[Path], where: str) -> Path:
    """Released paths start with ``ViewSpatial-Bench/``; the unzipped folders may sit with or without it."""
    relative = [path, path.removeprefix("ViewSpatial-Bench/")]
    for root in roots:
        for rel in relative:
            if (root / rel).is_file():
                return root / rel
    raise ValueError(
        f"{where}: image {path!r} not found (unzip scannetv2_val.zip / val2017.zip beside the JSON)"
    )


def _viewspatial_rows(questions: Path, source: Path, out: Path) -> Iterable[ManifestRow]:
    expected = 'a JSON list of {"question_type", "image_path", "question", "answer", "choices"}'
    records = load_json(questions, expected)
    if not isinstance(records, list):
        raise ValueError(f"{questions}: not a JSON list; expected {expected}")
    roots = list(dict.fromkeys([questions.parent, source, questions.parent.parent]))
    for i, record in enumerate(records):
        where = f"{questions}[{i}]"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: not an object; expected {expected}")
        options = _viewspatial_options(record.get("choices"), where)
        answer = _viewspatial_answer(text_field(record, "answer", where), options, where)
        paths = record.get("image_path")
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"{where}: field 'image_path' must be a path or a non-empty list of paths")
        images = [rel_path(_viewspatial_image(p, roots, where), out) for p in paths]
        question, choices = multiple_choice(text_field(record, "question", where), options)
        meta: dict[str, Any] = {
            "choices": choices,
            "source": source_meta("viewspatial", "index", i, record.get("question_type")),
        }
        if len(images) > 1:
            meta["images"] = images  # kept should a question list several; the verifier takes one: the first
        yield ManifestRow(
            id=f"viewspatial-{i}",
            task="3d",
            image=images[0],
            question=question,
            answer=answer,
            scorer="option",
            meta=meta,
        )


def import_viewspatial(source: Path, out: Path, *, seed: int = 0, limit: int | None = None) -> Path:
    """ViewSpatial-Bench: ``ViewSpatial-Bench.json`` with the unzipped ``scannetv2_val/`` and ``val2017/``."""
    source = Path(source)
    questions = find_file(source, ["ViewSpatial-Bench.json"], "ViewSpatial-Bench.json")
    root = source if source.is_dir() else questions.parent
    return write_rows(out, limited(_viewspatial_rows(questions, root, Path(out)), limit))


# ------------------------------------------------------------------------------------------------ public

BENCHMARKS: Mapping[str, Callable[..., Path]] = MappingProxyType(
    {
        "vstar": import_vstar,
        "hrbench": import_hrbench,
        "chartqa": import_chartqa,
        "charxiv": import_charxiv,
        "charxiv-descriptive": import_charxiv_descriptive,
        "viewspatial": import_viewspatial,
    }
)
# The paper's Stage I sources: each row's ``edited_image`` is the target the editor learns to produce.
SFT_SOURCES: Mapping[str, Callable[..., Path]] = MappingProxyType(
    {**box_sources.IMPORTERS, **view_sources.IMPORTERS}
)
IMPORTERS: Mapping[str, Callable[..., Path]] = MappingProxyType({**BENCHMARKS, **SFT_SOURCES})


def import_benchmark(
    name: str, source: Path, out: Path, *, seed: int = 0, limit: int | None = None, **options: Any
) -> Path:
    """Import benchmark or SFT source ``name`` from the downloaded ``source`` into ``out/manifest.jsonl``.

    ``seed`` fixes V*'s option shuffle and DL3DV's pair draw (the other formats keep their released order);
    ``limit`` keeps the first rows, for smoke runs; ``options`` are the importer's own keyword options
    (docs/importers.md), refused by name when it has no such option. Returns the manifest's path.
    """
    importer = IMPORTERS.get(name.strip().lower())
    if importer is None:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(IMPORTERS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    own = [
        parameter
        for parameter, spec in inspect.signature(importer).parameters.items()
        if spec.kind is inspect.Parameter.KEYWORD_ONLY and parameter not in ("seed", "limit")
    ]
    unknown = sorted(set(options) - set(own))
    if unknown:
        offered = f"its options: {', '.join(own)}" if own else "it takes none"
        raise ValueError(f"{name} has no option {', '.join(unknown)}; {offered}")
    return importer(Path(source), Path(out), seed=seed, limit=limit, **options)
