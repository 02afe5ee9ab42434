"""The red-box Stage I sources (V* training data, RefChartQA) on tiny files in their released layouts."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from etchr.answers import match_answer
from etchr.manifest import ManifestRow, read_manifest
from etchr_tools.data.bbox import RED, line_px
from etchr_tools.data.box_sources import LINE_WIDTH, xywh_to_corners
from etchr_tools.data.importers import import_benchmark

# ------------------------------------------------------------------------------------------- helpers


def _picture(size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    """A picture whose pixels differ from place to place (a box drawn in the wrong place shows)."""
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):
        for y in range(size[1]):
            image.putpixel((x, y), (color[0] // 2, color[1], 255 - color[2]))
    return image


def _save(image: Image.Image, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _rows(manifest: Path) -> list[ManifestRow]:
    return list(read_manifest(manifest))


def _check_box_pixels(original: Image.Image, edited: Image.Image, box: list[float]) -> None:
    """Red on the box's four sides, the picture untouched inside the box and outside it."""
    assert edited.size == original.size
    x0, y0, x1, y1 = (round(v) for v in box)
    x1, y1 = min(x1, edited.width - 1), min(y1, edited.height - 1)
    width = line_px(edited, LINE_WIDTH)
    mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
    for side in [(x0, mid_y), (x1, mid_y), (mid_x, y0), (mid_x, y1), (x0 + width - 1, mid_y)]:
        assert edited.getpixel(side) == RED, side
    inside = (x0 + width, mid_y)  # just past the outline
    assert edited.getpixel(inside) == original.getpixel(inside) != RED
    assert edited.getpixel((mid_x, mid_y)) == original.getpixel((mid_x, mid_y))
    for outside in [(x0 - 1, mid_y), (x1 + 1, mid_y), (mid_x, y0 - 1), (mid_x, y1 + 1)]:
        if 0 <= outside[0] < edited.width and 0 <= outside[1] < edited.height:
            assert edited.getpixel(outside) == original.getpixel(outside), outside


def _answered(row: ManifestRow, reply: str) -> bool | None:
    return match_answer(reply, row.answer, scorer=row.scorer, meta=row.meta).correct


# -------------------------------------------------------------------------------------- V* training

_GQA = "gqa/images/2354786.jpg"
_COCO = "coco2014/train2014/COCO_train2014_000000000009.jpg"


def _vstar_release(root: Path) -> Path:
    """seal_vqa_data/ (two of its files) inside the image folder, as SEAL's finetune.sh lays it out."""
    _save(_picture((64, 48), (40, 160, 60)), root / _GQA, "JPEG")
    _save(_picture((80, 60), (30, 60, 200)), root / _COCO, "JPEG")
    gqa = [
        {
            "image": _GQA,
            "question": "What color is the umbrella?",
            "answer": "The umbrella is red.",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nAdditional visual information to focus on: <object>.\n"
                    "What color is the umbrella?",
                },
                {"from": "gpt", "value": "The umbrella is red."},
            ],
            "search": 1,
            "target_instances": [{"name": "umbrella", "bbox": [10, 12, 20, 16]}],
        },
        {  # LLaVA instruction data mixed in: no visual-search target, skipped
            "image": _GQA,
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": "A street."},
            ],
        },
        {  # the only target lies outside the picture: nothing to draw, skipped
            "image": _GQA,
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nAdditional visual information to focus on: <object>.\nIs it wet?",
                },
                {"from": "gpt", "value": "Yes."},
            ],
            "search": 1,
            "target_instances": [{"name": "puddle", "bbox": [70, 50, 5, 5]}],
        },
    ]
    spatial = [
        {
            "image": _COCO,
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nAdditional visual information to focus on: <object>; <object>.\n"
                    "Is the cat on the left or right side of the dog?",
                },
                {"from": "gpt", "value": "The cat is on the left side of the dog."},
                {"from": "human", "value": "And the dog?"},
                {"from": "gpt", "value": "On the right."},
            ],
            "search": 1,
            "target_instances": [
                {"name": "cat", "bbox": [-4.5, 30, 14.5, 10]},  # starts left of the picture: clamped
                {"name": "dog", "bbox": [40.25, 8, 30, 40]},
            ],
        }
    ]
    data = root / "seal_vqa_data"
    data.mkdir()
    (data / "GQA_data.json").write_text(json.dumps(gqa))
    (data / "spatial_relation_data.json").write_text(json.dumps(spatial))
    return root


def test_vstar_train_rows_boxes_and_edits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _vstar_release(tmp_path / "data")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="etchr_tools.data.box_sources"):
        manifest = import_benchmark("vstar-train", source, out)
    rows = _rows(manifest)
    assert [row.id for row in rows] == ["vstar-train-GQA_data-0", "vstar-train-spatial_relation_data-0"]
    first, second = rows
    assert first.model_dump(exclude_none=True) == {
        "id": "vstar-train-GQA_data-0",
        "task": "perception",
        "image": f"../data/{_GQA}",
        "question": "What color is the umbrella?",
        "answer": "The umbrella is red.",
        "edited_image": "images/vstar-train/vstar-train-GQA_data-0_edit.png",
        "scorer": "auto",
        "meta": {
            "boxes": [[10.0, 12.0, 30.0, 28.0]],
            "targets": ["umbrella"],
            "source_boxes": [[10.0, 12.0, 20.0, 16.0]],
            "image_size": [64, 48],
            "source": {
                "benchmark": "vstar-train",
                "index": 0,
                "category": "GQA_data",
                "file": "GQA_data.json",
                "image": _GQA,
                "image_set": "gqa",
            },
        },
    }
    # the first exchange of a multi-turn record; both boxes, the first clamped at the left edge
    assert second.question == "Is the cat on the left or right side of the dog?"
    assert second.answer == "The cat is on the left side of the dog."
    assert second.image == f"../data/{_COCO}"
    assert second.meta is not None
    assert second.meta["boxes"] == [[0.0, 30.0, 10.0, 40.0], [40.25, 8.0, 70.25, 48.0]]
    assert second.meta["targets"] == ["cat", "dog"]
    assert second.meta["source"]["image_set"] == "coco2014"
    for row in rows:
        assert row.meta is not None and row.edited_image is not None
        original, edited = _rgb(out / row.image), _rgb(out / row.edited_image)
        for box in row.meta["boxes"]:
            _check_box_pixels(original, edited, box)
        reply = f"Looking at the region in the red box: {row.answer.lower()}\nAnswer: {row.answer}"
        assert _answered(row, reply) is True
    # nothing drawn where no box is: the first picture has red on exactly its box outline
    original, edited = _rgb(out / first.image), _rgb(out / str(first.edited_image))
    changed = {
        (x, y) for x in range(64) for y in range(48) if edited.getpixel((x, y)) != original.getpixel((x, y))
    }
    assert changed and all(10 <= x <= 30 and 12 <= y <= 28 for x, y in changed)
    assert "skipped 1 record(s): no target box inside the image" in caplog.text
    assert "skipped 1 record(s): no target_instances" in caplog.text


def test_vstar_train_source_forms_and_limit(tmp_path: Path) -> None:
    source = _vstar_release(tmp_path / "data")
    one = _rows(
        import_benchmark(
            "vstar-train", source / "seal_vqa_data" / "spatial_relation_data.json", tmp_path / "a"
        )
    )
    assert [row.id for row in one] == ["vstar-train-spatial_relation_data-0"]
    folder = _rows(import_benchmark("vstar-train", source / "seal_vqa_data", tmp_path / "b", limit=1))
    assert [row.id for row in folder] == ["vstar-train-GQA_data-0"]
    assert not (
        tmp_path / "b" / "images" / "vstar-train" / "vstar-train-spatial_relation_data-0_edit.png"
    ).exists()


def _vstar_with(tmp_path: Path, record: dict[str, Any] | str) -> Path:
    source = _vstar_release(tmp_path / "data")
    path = source / "seal_vqa_data" / "GQA_data.json"
    path.write_text(record if isinstance(record, str) else json.dumps([record]))
    return path


_GOOD: dict[str, Any] = {
    "image": _GQA,
    "conversations": [
        {
            "from": "human",
            "value": "<image>\nAdditional visual information to focus on: <object>.\nWhat is it?",
        },
        {"from": "gpt", "value": "A bench."},
    ],
    "search": 1,
    "target_instances": [{"name": "bench", "bbox": [1, 2, 3, 4]}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"target_instances": [{"name": "bench", "bbox": [1, 2, 3]}]},
            r"target_instances\[0\]: 'bbox' must be",
        ),
        ({"target_instances": [{"name": "bench", "bbox": [1, "2", 3, 4]}]}, r"'2' is not a finite number"),
        ({"target_instances": None, "search": 1}, r"'target_instances' is not a list"),
        ({"image": "gqa/images/missing.jpg"}, r"image 'gqa/images/missing.jpg' not found under"),
        ({"conversations": [{"from": "human", "value": "<image>\nWhat is it?"}]}, r"no human turn answered"),
        (
            {"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A bench."}]},
            r"no question left",
        ),
    ],
)
def test_vstar_train_malformed_records(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = _vstar_with(tmp_path, _GOOD | change)
    with pytest.raises(ValueError, match=message) as caught:
        import_benchmark("vstar-train", path.parent, tmp_path / "out")
    assert f"{path}[0]" in str(caught.value)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_vstar_train_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"none of GQA_data\.json.*craigwu/seal_vqa_data"):
        import_benchmark("vstar-train", tmp_path / "nowhere", tmp_path / "out")
    path = _vstar_with(tmp_path, "[{not json")
    with pytest.raises(ValueError, match=r"GQA_data\.json: not readable JSON"):
        import_benchmark("vstar-train", path.parent, tmp_path / "out")
    path.write_text(json.dumps({"image": _GQA}))
    with pytest.raises(ValueError, match=r"GQA_data\.json: not a JSON list"):
        import_benchmark("vstar-train", path, tmp_path / "out")
    search_without_targets = {key: value for key, value in _GOOD.items() if key != "target_instances"}
    path.write_text(json.dumps([search_without_targets]))
    with pytest.raises(ValueError, match=r"'search' is set but 'target_instances' is missing"):
        import_benchmark("vstar-train", path, tmp_path / "out")


def test_vstar_train_cli_end_to_end(tmp_path: Path) -> None:
    source = _vstar_release(tmp_path / "data")
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "etchr_tools.cli",
            "data",
            "import",
            "vstar-train",
            "--source",
            str(source),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "perception" in done.stdout and f"wrote {out / 'manifest.jsonl'}" in done.stdout
    rows = _rows(out / "manifest.jsonl")
    assert [row.task for row in rows] == ["perception", "perception"]
    assert all((out / str(row.edited_image)).is_file() for row in rows)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "etchr_tools.cli",
            "data",
            "import",
            "vstar-train",
            "--source",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "GQA_data.json" in bad.stderr


def test_xywh_to_corners() -> None:
    assert xywh_to_corners(10, 12, 20, 16, 64, 48) == [10.0, 12.0, 30.0, 28.0]
    assert xywh_to_corners(-1.2, 2.1, 8.4, 9.2, 64, 48) == [0.0, 2.1, 7.2, 11.3]
    assert xywh_to_corners(60, 40, 10, 10, 64, 48) == [60.0, 40.0, 64.0, 48.0]
    assert xywh_to_corners(70, 50, 5, 5, 64, 48) is None
    assert xywh_to_corners(5, 5, 0, 4, 64, 48) is None


# ---------------------------------------------------------------------------------------------- RefChartQA

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the `import` extra; the V* tests above need no Parquet
    pa = pq = None
needs_arrow = pytest.mark.skipif(pa is None, reason="reading RefChartQA's Parquet needs pyarrow")

_BAR = _picture((120, 90), (230, 230, 230))
_LINE = _picture((100, 80), (250, 250, 240))


def _refchart_table(rows: list[dict[str, Any]]) -> Any:
    """The hub's schema: an Image column ({bytes, path}) and grounding boxes as structs of x, y, w, h."""
    box = pa.struct([(key, pa.float64()) for key in "xywh"])
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("query", pa.string()),
            ("response", pa.string()),
            ("label", pa.string()),
            ("type", pa.string()),
            ("grounding_bboxes", pa.list_(box)),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _refchart_release(root: Path) -> Path:
    """data/train-*.parquet and data/validation-*.parquet, as omoured/RefChartQA ships them."""
    train = [
        {
            "id": "multi_col_100",
            "image": {"bytes": _encoded(_BAR, "PNG"), "path": None},
            "query": "What is the value of the tallest bar?",
            "response": "<box>100,200,300,900</box><grounding-sep>42",
            "label": "42",
            "type": "human",
            "grounding_bboxes": [{"x": 20.0, "y": 10.0, "w": 30.0, "h": 60.5}],
        },
        {
            "id": "two_col_7",
            "image": {"bytes": _encoded(_LINE, "JPEG"), "path": "two_col_7.jpg"},
            "query": "Which year has the lowest value, 2019 or 2020?",
            "response": "",
            "label": "2019",
            "type": "machine",
            "grounding_bboxes": [
                {"x": 5.0, "y": 50.0, "w": 12.0, "h": 40.0},  # runs below the chart: clamped
                {"x": 60.0, "y": 20.0, "w": 15.0, "h": 30.0},
            ],
        },
        {  # a box wholly outside the chart: no target, skipped
            "id": "two_col_8",
            "image": {"bytes": _encoded(_LINE, "PNG"), "path": None},
            "query": "What is shown?",
            "response": "",
            "label": "sales",
            "type": "pot",
            "grounding_bboxes": [{"x": 200.0, "y": 5.0, "w": 10.0, "h": 10.0}],
        },
    ]
    validation = [train[0] | {"id": "val_1"}]
    (root / "data").mkdir(parents=True)
    pq.write_table(_refchart_table(train), root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(_refchart_table(validation), root / "data" / "validation-00000-of-00001.parquet")
    return root


@needs_arrow
def test_refchartqa_rows_boxes_and_edits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _refchart_release(tmp_path / "RefChartQA")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="etchr_tools.data.box_sources"):
        rows = _rows(import_benchmark("refchartqa", source, out))
    assert [row.id for row in rows] == ["refchartqa-train-multi_col_100", "refchartqa-train-two_col_7"]
    first, second = rows
    assert first.model_dump(exclude_none=True) == {
        "id": "refchartqa-train-multi_col_100",
        "task": "chart",
        "image": "images/refchartqa/refchartqa-train-multi_col_100.png",
        "question": "What is the value of the tallest bar?",
        "answer": "42",
        "edited_image": "images/refchartqa/refchartqa-train-multi_col_100_edit.png",
        "scorer": "auto",
        "meta": {
            "boxes": [[20.0, 10.0, 50.0, 70.5]],
            "source_boxes": [{"x": 20.0, "y": 10.0, "w": 30.0, "h": 60.5}],
            "image_size": [120, 90],
            "source": {
                "benchmark": "refchartqa",
                "id": "multi_col_100",
                "category": "human",
                "split": "train",
                "file": "train-00000-of-00001.parquet",
            },
        },
    }
    assert (out / first.image).read_bytes() == _encoded(_BAR, "PNG")  # the chart as released
    assert second.image == "images/refchartqa/refchartqa-train-two_col_7.jpg"
    assert second.meta is not None
    assert second.meta["boxes"] == [[5.0, 50.0, 17.0, 80.0], [60.0, 20.0, 75.0, 50.0]]
    assert second.meta["source"]["category"] == "machine"
    for row in rows:
        assert row.meta is not None and row.edited_image is not None
        original, edited = _rgb(out / row.image), _rgb(out / row.edited_image)
        for box in row.meta["boxes"]:
            _check_box_pixels(original, edited, box)
        assert _answered(row, f"The marked bar reads {row.answer}.\nAnswer: {row.answer}") is True
    assert "skipped 1 record(s): no grounding box inside the chart" in caplog.text


@needs_arrow
def test_refchartqa_one_file_and_limit(tmp_path: Path) -> None:
    source = _refchart_release(tmp_path / "RefChartQA")
    val = _rows(
        import_benchmark("refchartqa", source / "data" / "validation-00000-of-00001.parquet", tmp_path / "v")
    )
    assert [row.id for row in val] == ["refchartqa-validation-val_1"]
    assert val[0].meta is not None and val[0].meta["source"]["split"] == "validation"
    assert len(_rows(import_benchmark("refchartqa", source / "data", tmp_path / "l", limit=1))) == 1


@needs_arrow
def test_refchartqa_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no train-\*\.parquet found.*omoured/RefChartQA"):
        import_benchmark("refchartqa", tmp_path / "empty", tmp_path / "out")
    broken = tmp_path / "train-00000-of-00001.parquet"
    broken.write_text("not parquet")
    with pytest.raises(ValueError, match=r"not a readable Parquet file"):
        import_benchmark("refchartqa", broken, tmp_path / "out")
    pq.write_table(pa.table({"id": ["a"], "query": ["q"], "label": ["1"]}), broken)
    with pytest.raises(ValueError, match=r"missing column\(s\) image, grounding_bboxes"):
        import_benchmark("refchartqa", broken, tmp_path / "out")
    as_lists = pa.table(
        {
            "id": ["a"],
            "image": [{"bytes": _encoded(_BAR, "PNG"), "path": None}],
            "query": ["q"],
            "label": ["1"],
            "grounding_bboxes": [[[1.0, 2.0, 3.0, 4.0]]],  # corners or x, y, w, h? refused, not guessed
        }
    )
    pq.write_table(as_lists, broken)
    with pytest.raises(ValueError, match=rf"{broken}\[0\]\.grounding_bboxes\[0\]: expected \{{x, y, w, h\}}"):
        import_benchmark("refchartqa", broken, tmp_path / "out")
    no_image = _refchart_table(
        [
            {
                "id": "a",
                "image": {"bytes": b"GIF89 but not really", "path": None},
                "query": "q",
                "response": "",
                "label": "1",
                "type": "human",
                "grounding_bboxes": [{"x": 1.0, "y": 1.0, "w": 2.0, "h": 2.0}],
            }
        ]
    )
    pq.write_table(no_image, broken)
    with pytest.raises(ValueError, match=rf"{broken}\[0\]: column 'image' is not an image"):
        import_benchmark("refchartqa", broken, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
