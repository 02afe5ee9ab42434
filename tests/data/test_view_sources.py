"""The Spatial-SSRL jigsaw and DL3DV importers on tiny releases written here in each source's own layout."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageChops

from etchr.answers import match_answer
from etchr.manifest import ManifestRow, read_manifest
from etchr_tools.data import jigsaw
from etchr_tools.data.importers import IMPORTERS, import_benchmark
from etchr_tools.data.view_sources import DL3DV_TEMPLATES, import_dl3dv, import_spatial_ssrl_jigsaw

Matrix = list[list[float]]

# ------------------------------------------------------------------------------------- Spatial-SSRL jigsaw

# The released wording (Spatial-SSRL paper, Appendix A.2); the vertical-strip one follows the same pattern.
_GRID_2X2 = (
    "<image>The image has been divided into 4 shuffled patches labeled 0, 1, 2, and 3. Based on visual "
    "clues such as continuity, alignment, and context, answer the correct arrangement of the patches to "
    "restore the original image, where the format is 'TopLeft-TopRight-BottomLeft-BottomRight'."
)
_STRIPS_1X4 = (
    "<image>The image has been divided into 4 shuffled horizontal strips labeled 0, 1, 2, and 3. Based on "
    "visual clues such as continuity, alignment, and context, answer the correct arrangement of the strips "
    "to restore the original image, where the format is 'Left-Middle1-Middle2-Right'."
)
_STRIPS_3X1 = (
    "<image>The image has been divided into 3 shuffled vertical strips labeled 0, 1, and 2. Based on visual "
    "clues such as continuity, alignment, and context, answer the correct arrangement of the strips to "
    "restore the original image, where the format is 'Top-Middle-Bottom'."
)
_FLIP = (
    "<image>The image has been divided into 4 labeled 0, 1, 2, and 3. One of the four patches is flipped "
    "either horizontally or vertically. Based on visual clues such as continuity, alignment, and context, "
    "answer the correct patch that is flipped and the direction the flip, where the format is "
    "'Label-Direction'. The direction can only be 0(flipped vertically) or 1(flipped horizontally)."
)
_COLOURS = [(230, 40, 40), (40, 200, 60), (40, 80, 230), (240, 220, 30), (200, 60, 200), (30, 200, 210)]


def _original(rows: int, cols: int, tile: int = 16) -> Image.Image:
    """A picture whose tiles are solid, distinct colours: restoring it is checkable pixel for pixel."""
    return jigsaw.assemble(
        [Image.new("RGB", (tile, tile), _COLOURS[k]) for k in range(rows * cols)], rows, cols
    )


def _shuffle(original: Image.Image, rows: int, cols: int, shuffle: Sequence[int]) -> tuple[Image.Image, str]:
    """As the release's data_process/Shuffle.py: displayed patch d is original patch shuffle[d]; the ground
    truth is argsort(shuffle), written '0-2-3-1'."""
    pieces = jigsaw.tiles_of(original, rows, cols)
    shown = jigsaw.assemble([pieces[k] for k in shuffle], rows, cols)
    truth = sorted(range(len(shuffle)), key=lambda d: shuffle[d])
    return shown, "-".join(str(v) for v in truth)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _ssrl_release(root: Path, *, prefix: str = "images/") -> dict[str, Image.Image]:
    """``spatialssrl.parquet`` + ``images/{shuffle,flip}/`` beside it; returns the originals by image name."""
    originals = {}
    records = []
    for name, question, rows, cols, shuffle in [
        ("shuffle_0.png", _GRID_2X2, 2, 2, [2, 0, 3, 1]),
        ("shuffle_1.png", _STRIPS_1X4, 1, 4, [3, 2, 0, 1]),
        ("shuffle_2.png", _STRIPS_3X1, 3, 1, [1, 2, 0]),
    ]:
        originals[name] = _original(rows, cols)
        shown, answer = _shuffle(originals[name], rows, cols, shuffle)
        _save(shown, root / "images" / "shuffle" / name)
        records.append({"problem": question, "answer": answer, "images": [f"{prefix}shuffle/{name}"]})
    _save(_original(2, 2), root / "images" / "flip" / "flip_0.jpg")
    records.insert(1, {"problem": _FLIP, "answer": "3-0", "images": [f"{prefix}flip/flip_0.jpg"]})
    pq.write_table(pa.Table.from_pylist(records), root / "spatialssrl.parquet")
    return originals


def _reply(answer: str) -> str:
    thought = "Matching the edges of the patches, the sky runs across the top."
    return f"<think>{thought}</think> \\boxed{{{answer}}}"


def _check_jigsaw(manifest: Path) -> list[ManifestRow]:
    rows = list(read_manifest(manifest))
    assert rows
    for row in rows:
        meta = row.meta or {}
        assert row.task == "jigsaw" and row.scorer == "jigsaw" and row.edited_image
        assert (manifest.parent / row.image).is_file() and (manifest.parent / row.edited_image).is_file()
        assert row.question == jigsaw.open_question(meta["rows"], meta["cols"])
        assert row.answer == jigsaw.format_permutation(meta["permutation"])
        assert match_answer(_reply(row.answer), row.answer, scorer=row.scorer, meta=meta).correct is True
        said = "The restored order, position by position, is " + ", ".join(map(str, meta["permutation"]))
        assert match_answer(said, row.answer, scorer=row.scorer, meta=meta).correct is True
        wrong = list(reversed(meta["permutation"]))
        assert match_answer(_reply(str(wrong)), row.answer, scorer=row.scorer, meta=meta).correct is False
        assert meta["source"]["benchmark"] == "spatial-ssrl"
    return rows


def test_spatial_ssrl_jigsaw_rows_restore_the_picture(tmp_path: Path) -> None:
    originals = _ssrl_release(tmp_path / "ssrl")
    manifest = import_benchmark("spatial-ssrl-jigsaw", tmp_path / "ssrl", tmp_path / "out")
    rows = _check_jigsaw(manifest)
    assert [row.id for row in rows] == ["spatial-ssrl-0", "spatial-ssrl-2", "spatial-ssrl-3"]  # flip skipped
    grids = [(row.meta["rows"], row.meta["cols"]) for row in rows]  # type: ignore[index]
    assert grids == [(2, 2), (1, 4), (3, 1)]
    assert rows[0].answer == "[1, 3, 0, 2]" and rows[0].meta["original_answer"] == "1-3-0-2"  # type: ignore[index]
    assert rows[0].meta["source"]["category"] == "2x2"  # type: ignore[index]
    for row, name in zip(rows, originals, strict=True):
        assert row.image == f"../ssrl/images/shuffle/{name}"  # referenced where it lies
        with Image.open(manifest.parent / str(row.edited_image)) as edited:
            assert ImageChops.difference(edited.convert("RGB"), originals[name]).getbbox() is None


def test_spatial_ssrl_jigsaw_finds_the_table_and_images_where_the_readers_put_them(tmp_path: Path) -> None:
    # training.md: parquets/train.parquet and data/images/ ; the table's paths written for another machine
    root = tmp_path / "GRPO" / "data"
    _ssrl_release(root, prefix="/data/images/")
    (root / "parquets").mkdir()
    (root / "spatialssrl.parquet").rename(root / "parquets" / "train.parquet")
    rows = _check_jigsaw(import_spatial_ssrl_jigsaw(root / "parquets", tmp_path / "out", limit=2))
    assert len(rows) == 2 and rows[1].id == "spatial-ssrl-2"

    # a JSON-lines copy with the images embedded as {bytes, path}, as a datasets Image column stores them
    shown, answer = _shuffle(_original(2, 2), 2, 2, [1, 0, 3, 2])
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=95)
    embedded = {"bytes": buffer.getvalue(), "path": "shuffle/x.jpg"}
    table = pa.Table.from_pylist([{"problem": _GRID_2X2, "answer": answer, "images": [embedded]}])
    pq.write_table(table, tmp_path / "embedded.parquet")
    row = _check_jigsaw(import_spatial_ssrl_jigsaw(tmp_path / "embedded.parquet", tmp_path / "o2"))[0]
    assert row.image == "images/spatial-ssrl/spatial-ssrl-0-input.jpg"
    with Image.open(tmp_path / "o2" / str(row.edited_image)) as edited:
        top_left = edited.convert("RGB").getpixel((8, 8))
    assert all(abs(a - b) < 12 for a, b in zip(top_left, _COLOURS[0], strict=True))  # JPEG, so nearly

    lines = [json.dumps({"problem": _STRIPS_1X4, "answer": "2-0-1-3", "images": ["images/shuffle/s.png"]})]
    _save(_original(1, 4), tmp_path / "js" / "images" / "shuffle" / "s.png")
    (tmp_path / "js" / "spatialssrl.jsonl").write_text("\n".join(lines) + "\n")
    assert len(_check_jigsaw(import_spatial_ssrl_jigsaw(tmp_path / "js", tmp_path / "o3"))) == 1


def _one_row_release(root: Path, record: dict[str, object]) -> Path:
    _save(_original(2, 2), root / "images" / "shuffle" / "a.png")
    pq.write_table(pa.Table.from_pylist([record]), root / "spatialssrl.parquet")
    return root


def test_spatial_ssrl_jigsaw_errors_name_the_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"none of spatialssrl\.parquet"):
        import_spatial_ssrl_jigsaw(tmp_path, out)
    good = {"problem": _GRID_2X2, "answer": "1-3-0-2", "images": ["images/shuffle/a.png"]}
    cases = [
        ({**good, "answer": " "}, r"spatialssrl.parquet\[0\]: missing or empty field 'answer'"),
        ({**good, "answer": "0-0-1-2"}, "not a permutation"),
        ({**good, "answer": "0-1-2"}, "has 4 slots but the answer lists 3"),
        ({**good, "images": ["images/shuffle/missing.png"]}, "image 'images/shuffle/missing.png' not found"),
        ({**good, "images": []}, "exactly one image"),
        (
            {**good, "problem": "<image>Put the shuffled pieces back to restore the picture."},
            "cannot tell the grid",
        ),
    ]
    for number, (record, message) in enumerate(cases):
        source = _one_row_release(tmp_path / f"r{number}", record)
        with pytest.raises(ValueError, match=message):
            import_spatial_ssrl_jigsaw(source, out)
    assert not (out / "manifest.jsonl").exists()
    pq.write_table(pa.Table.from_pylist([{"problem": _FLIP, "answer": "3-0"}]), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="missing column"):
        import_spatial_ssrl_jigsaw(tmp_path / "cols.parquet", out)
    flip_only = {"problem": _FLIP, "answer": "3-0", "images": ["images/flip/f.jpg"]}
    pq.write_table(pa.Table.from_pylist([flip_only]), tmp_path / "flip.parquet")
    with pytest.raises(ValueError, match="no shuffled patch reordering rows"):
        import_spatial_ssrl_jigsaw(tmp_path / "flip.parquet", out)


# -------------------------------------------------------------------------------------------------- DL3DV


def _rot_x(degrees: float) -> Matrix:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [[1, 0, 0], [0, c, -s], [0, s, c]]


def _rot_y(degrees: float) -> Matrix:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [[c, 0, s], [0, 1, 0], [-s, 0, c]]


def _rot_z(degrees: float) -> Matrix:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [[c, -s, 0], [s, c, 0], [0, 0, 1]]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _pose(rotation: Matrix, position: Sequence[float]) -> Matrix:
    """A camera-to-world matrix (OpenGL axes) as transforms.json stores it."""
    return [[*rotation[r], float(position[r])] for r in range(3)] + [[0.0, 0.0, 0.0, 1.0]]


def _then(c2w: Matrix, rotation: Matrix, translation: Sequence[float]) -> Matrix:
    """The pose reached by moving ``translation`` and turning by ``rotation`` in the camera's own frame."""
    return _mul(c2w, _pose(rotation, translation))


_IDENTITY = _rot_x(0.0)


def _scene(
    folder: Path,
    poses: Sequence[Matrix],
    *,
    images: str = "images_4",
    size: tuple[int, int] = (16, 9),
    per_frame_intrinsics: bool = False,
) -> Path:
    """A DL3DV scene as the 960P download unzips it: transforms.json (nerfstudio layout, intrinsics of the 4K
    frames) and the frames in ``images_4/`` under the names ``file_path`` gives for ``images/``."""
    intrinsics = {"fl_x": 1700.0, "fl_y": 1700.0, "cx": 1920.0, "cy": 1080.0, "w": 3840, "h": 2160}
    frames = []
    for k, pose in enumerate(poses):
        name = f"frame_{k + 1:05d}.png"
        frame = {"file_path": f"images/{name}", "transform_matrix": pose, "colmap_im_id": k + 1}
        frames.append({**frame, **intrinsics} if per_frame_intrinsics else frame)
        _save(Image.new("RGB", size, _COLOURS[k % len(_COLOURS)]), folder / images / name)
    top = {} if per_frame_intrinsics else {**intrinsics, "camera_model": "OPENCV", "k1": 0.01, "k2": 0.0}
    frames.reverse()  # the importer sorts frames by file name, as nerfstudio does
    transforms = {**top, "frames": frames, "applied_transform": [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transforms.json").write_text(json.dumps(transforms))
    return folder


_ANY = {"baseline": (0.0, 100.0), "rotation": (0.0, 180.0)}


def _only_row(folder: Path, out: Path, template: str) -> ManifestRow:
    rows = list(read_manifest(import_dl3dv(folder, out, templates=(template,), **_ANY)))  # type: ignore[arg-type]
    assert len(rows) == 1
    return rows[0]


def _said(row: ManifestRow) -> str:
    return (row.meta or {})["choices"][row.answer]


def _check_3d(manifest: Path) -> list[ManifestRow]:
    rows = list(read_manifest(manifest))
    assert rows
    for row in rows:
        meta = row.meta or {}
        assert row.task == "3d" and row.scorer == "option" and row.edited_image
        assert [row.image, row.edited_image] == meta["frames"]
        assert (manifest.parent / row.image).is_file() and (manifest.parent / row.edited_image).is_file()
        assert meta["template"] in DL3DV_TEMPLATES and meta["source"]["benchmark"] == "dl3dv"
        for letter, text in meta["choices"].items():
            assert f"({letter}) {text}" in row.question
        reply = f"Comparing the two views, the camera's shift is clear.\nAnswer: {row.answer}"
        assert match_answer(reply, row.answer, scorer=row.scorer, meta=meta).correct is True
        quoted = f"The answer is {meta['choices'][row.answer]}."
        assert match_answer(quoted, row.answer, scorer=row.scorer, meta=meta).correct is True
        other = next(letter for letter in meta["choices"] if letter != row.answer)
        assert match_answer(f"Answer: {other}", row.answer, scorer=row.scorer, meta=meta).correct is False
    return rows


def test_dl3dv_moves_read_in_the_first_cameras_frame(tmp_path: Path) -> None:
    moves = {
        "right": (1, 0, 0),
        "left": (-1, 0, 0),
        "up": (0, 1, 0),
        "down": (0, -1, 0),
        "forward": (0, 0, -1),  # the camera looks along -z
        "backward": (0, 0, 1),
    }
    for expected, step in moves.items():
        scene = _scene(tmp_path / expected, [_pose(_IDENTITY, (0, 0, 0)), _pose(_IDENTITY, step)])
        row = _only_row(scene, tmp_path / f"out-{expected}", "move-direction")
        assert _said(row) == expected
        assert row.meta["translation"] == list(map(float, step))  # type: ignore[index]
        assert row.meta["rotation"]["degrees"] == 0.0 and row.meta["baseline"] == 2.0  # type: ignore[index]
        _check_3d(tmp_path / f"out-{expected}" / "manifest.jsonl")

    # +x translation shows more of the right; the pose's distance is 2 scene radii: "more than 50%"
    right = tmp_path / "right"
    assert _said(_only_row(right, tmp_path / "side", "visible-side")) == "the right side"
    assert _said(_only_row(right, tmp_path / "far", "move-distance")) == "more than 50% of the radius"
    with pytest.raises(ValueError, match="no frame pair"):  # a pure translation settles no turn
        import_dl3dv(right, tmp_path / "turn", templates=("turn-direction",), **_ANY)  # type: ignore[arg-type]


def test_dl3dv_turns_follow_the_opengl_convention(tmp_path: Path) -> None:
    start = _pose(_IDENTITY, (0, 0, 0))
    yaw_left = _scene(tmp_path / "yaw", [start, _pose(_rot_y(30.0), (0, 0, -0.2))])  # +30 deg about +y
    row = _only_row(yaw_left, tmp_path / "o1", "turn-direction")
    assert _said(row) == "left"
    rotation = row.meta["rotation"]  # type: ignore[index]
    assert rotation["degrees"] == pytest.approx(30.0) and rotation["yaw"] == pytest.approx(30.0)
    assert rotation["axis"] == pytest.approx([0.0, 1.0, 0.0]) and rotation["pitch"] == pytest.approx(0.0)
    assert _said(_only_row(yaw_left, tmp_path / "o2", "turn-angle")) == "20 to 35 degrees"
    wide_left = _scene(tmp_path / "wide", [start, _pose(_rot_y(45.0), (0, 0, -0.2))])
    assert _said(_only_row(wide_left, tmp_path / "o3", "visible-side")) == "the left side"
    assert _said(_only_row(yaw_left, tmp_path / "o4", "move-direction")) == "forward"

    yaw_right = _scene(tmp_path / "yr", [start, _pose(_rot_y(-12.0), (0, 0, -0.2))])
    assert _said(_only_row(yaw_right, tmp_path / "o5", "turn-direction")) == "right"
    assert _said(_only_row(yaw_right, tmp_path / "o6", "turn-angle")) == "10 to 20 degrees"
    pitch_up = _scene(tmp_path / "pitch", [start, _pose(_rot_x(30.0), (0, 0, -0.2))])
    assert _said(_only_row(pitch_up, tmp_path / "o7", "turn-direction")) == "up"
    assert _said(_only_row(pitch_up, tmp_path / "o8", "visible-side")) == "the top"
    pitch_down = _scene(tmp_path / "down", [start, _pose(_rot_x(-70.0), (0, 0, -0.2))])
    assert _said(_only_row(pitch_down, tmp_path / "o9", "turn-direction")) == "down"
    assert _said(_only_row(pitch_down, tmp_path / "o10", "turn-angle")) == "more than 60 degrees"


def test_dl3dv_relative_pose_ignores_the_world_frame(tmp_path: Path) -> None:
    """COLMAP's world is arbitrary (nerfstudio even re-orients it): only the first camera's frame counts."""
    first = _pose(_mul(_rot_z(40.0), _rot_x(-15.0)), (2.0, -1.0, 3.0))
    second = _then(first, _rot_y(-25.0), (0.4, 0.0, 0.0))  # step right, turn right, in the camera's frame
    scene = _scene(tmp_path / "w", [first, second], per_frame_intrinsics=True)
    row = _only_row(scene, tmp_path / "o1", "move-direction")
    meta = row.meta or {}
    assert _said(row) == "right" and meta["translation"] == pytest.approx([0.4, 0.0, 0.0], abs=1e-6)
    assert meta["rotation"]["yaw"] == pytest.approx(-25.0)
    assert meta["rotation"]["degrees"] == pytest.approx(25.0)
    assert meta["rotation"]["axis"] == pytest.approx([0.0, -1.0, 0.0], abs=1e-6)
    assert meta["scene_radius"] == pytest.approx(0.2)
    assert _said(_only_row(scene, tmp_path / "o2", "turn-direction")) == "right"
    assert _said(_only_row(scene, tmp_path / "o3", "visible-side")) == "the right side"


def _orbit(folder: Path, frames: int = 20, step: float = 15.0, radius: float = 2.0) -> Path:
    """A capture walking most of a circle around the scene, always facing its centre (DL3DV's guideline)."""
    poses = []
    for k in range(frames):
        phi = math.radians(k * step)
        poses.append(_pose(_rot_y(k * step), (radius * math.sin(phi), 0.0, radius * math.cos(phi))))
    return _scene(folder, poses)


def test_dl3dv_pairs_by_baseline_and_rotation_deterministic_by_seed(tmp_path: Path) -> None:
    scene = _orbit(tmp_path / "1K" / "0a1b2c")
    rows = _check_3d(import_dl3dv(tmp_path, tmp_path / "out", seed=3))
    assert len(rows) == 8 and len({row.id for row in rows}) == 8  # pairs_per_scene
    assert rows[0].id.startswith("dl3dv-1K_0a1b2c-")
    for row in rows:
        meta = row.meta or {}
        assert meta["scene"] == "1K/0a1b2c" and 0.05 <= meta["baseline"] <= 0.6
        assert 5.0 <= meta["rotation"]["degrees"] <= 60.0
        assert meta["frames"][0].startswith("../1K/0a1b2c/images_4/frame_")
        i, j = meta["frame_indices"]
        assert i < j and meta["frame_files"] == [f"images/frame_{k + 1:05d}.png" for k in (i, j)]
        # walking the circle to the left of the centre: the camera steps right and turns left
        expected = {
            "move-direction": "right",
            "turn-direction": "left",
            "turn-angle": "10 to 20 degrees" if meta["rotation"]["degrees"] < 20 else "20 to 35 degrees",
        }
        assert _said(row) == expected[meta["template"]]
    again = list(read_manifest(import_dl3dv(tmp_path, tmp_path / "again", seed=3)))
    assert [r.model_dump() for r in again] == [r.model_dump() for r in rows]
    first_three = list(read_manifest(import_dl3dv(tmp_path, tmp_path / "three", seed=3, limit=3)))
    assert [r.id for r in first_three] == [r.id for r in rows[:3]]
    other = list(read_manifest(import_dl3dv(tmp_path, tmp_path / "other", seed=4)))
    assert [r.id for r in other] != [r.id for r in rows]
    alone = list(read_manifest(import_dl3dv(scene, tmp_path / "alone", seed=3)))  # the scene folder itself
    assert [r.meta["frame_indices"] for r in alone] == [r.meta["frame_indices"] for r in rows]  # type: ignore[index]
    narrow = _check_3d(import_dl3dv(scene, tmp_path / "n", baseline=(0.1, 0.3), pairs_per_scene=100))
    assert {tuple(r.meta["frame_indices"]) for r in narrow} <= {(k, k + 1) for k in range(19)}  # type: ignore[index]


def test_dl3dv_frame_folders_as_nerfstudio_picks_them(tmp_path: Path) -> None:
    two = [_pose(_IDENTITY, (0, 0, 0)), _pose(_IDENTITY, (1, 0, 0))]
    # the sample release: <hash>/colmap/{transforms.json, images, images_2, images_4, images_8}
    sample = _scene(tmp_path / "sample" / "5c3af5" / "colmap", two, images="images")
    for factor in (2, 4, 8):
        _scene(sample, two, images=f"images_{factor}")
    row = _only_row(tmp_path / "sample", tmp_path / "o1", "move-direction")
    assert row.meta["scene"] == "5c3af5" and "/colmap/images/frame_00001.png" in row.image  # type: ignore[index]
    forced = list(read_manifest(import_dl3dv(sample, tmp_path / "o3", downscale=4, **_ANY)))  # type: ignore[arg-type]
    assert all("/images_4/" in r.image for r in forced)
    # 4K frames: halved while the long side is >= 1600 px and a smaller copy exists (nerfstudio's auto choice)
    big = _scene(tmp_path / "big", two, images="images", size=(3840, 4))
    _scene(big, two, images="images_2", size=(1920, 4))
    assert "/images_2/" in _only_row(big, tmp_path / "o4", "move-direction").image
    _scene(big, two, images="images_4", size=(960, 4))
    assert "/images_4/" in _only_row(big, tmp_path / "o5", "move-direction").image


def test_dl3dv_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not found"):
        import_dl3dv(tmp_path / "nowhere", out)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no transforms\.json here or up to 3 folders below"):
        import_dl3dv(tmp_path / "empty", out)
    two = [_pose(_IDENTITY, (0, 0, 0)), _pose(_IDENTITY, (1, 0, 0))]
    scene = _scene(tmp_path / "s", two)
    transforms = json.loads((scene / "transforms.json").read_text())

    def broken(name: str, change: dict[str, object]) -> Path:
        folder = _scene(tmp_path / name, two)
        (folder / "transforms.json").write_text(json.dumps({**transforms, **change}))
        return folder

    frames = transforms["frames"]
    skewed = [{**frames[0], "transform_matrix": [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]
    cases = [
        (broken("noframes", {"frames": []}), "no 'frames' list"),
        (broken("nofocal", {"fl_x": None}), "intrinsic 'fl_x' is set neither"),
        (
            broken("skew", {"frames": skewed + frames[1:]}),
            r"frames\[0\]: the rotation part .* not orthonormal",
        ),
        (broken("short", {"frames": [{**frames[0], "transform_matrix": [[1, 0, 0]]}, frames[1]]}), "4x4"),
        (broken("nopath", {"frames": [{"transform_matrix": two[0]}, frames[1]]}), "field 'file_path'"),
    ]
    for source, message in cases:
        with pytest.raises(ValueError, match=message):
            import_dl3dv(source, out, **_ANY)  # type: ignore[arg-type]
    (tmp_path / "bad" / "transforms.json").parent.mkdir()
    (tmp_path / "bad" / "transforms.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        import_dl3dv(tmp_path / "bad", out)
    for frame in (scene / "images_4").iterdir():
        frame.unlink()
    with pytest.raises(ValueError, match=r"is in none of images/frame_00001\.png, images_2/"):
        import_dl3dv(scene, out, **_ANY)  # type: ignore[arg-type]
    assert not (out / "manifest.jsonl").exists()
    for options, message in [
        ({"baseline": (0.5, 0.1)}, "baseline must satisfy"),
        ({"rotation": (0, 200)}, "rotation must satisfy"),
        ({"templates": ("roll",)}, "templates must be some of move-direction"),
        ({"pairs_per_scene": 0}, "pairs_per_scene"),
        ({"downscale": 0}, "downscale"),
    ]:
        with pytest.raises(ValueError, match=message):
            import_dl3dv(scene, out, **options)  # type: ignore[arg-type]


def test_registry_and_cli_end_to_end(tmp_path: Path) -> None:
    assert IMPORTERS["dl3dv"] is import_dl3dv
    assert IMPORTERS["spatial-ssrl-jigsaw"] is import_spatial_ssrl_jigsaw
    _orbit(tmp_path / "DL3DV-10K" / "1K" / "scene_a")
    _orbit(tmp_path / "DL3DV-10K" / "1K" / "scene_b", frames=12, step=20.0)
    out = tmp_path / "corpus"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "etchr_tools.cli",
            "data",
            "import",
            "dl3dv",
            *("--source", str(tmp_path / "DL3DV-10K")),
            *("--out", str(out), "--seed", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = _check_3d(out / "manifest.jsonl")
    assert {row.meta["scene"] for row in rows} == {"1K/scene_a", "1K/scene_b"}  # type: ignore[index]
    assert re.search(r"^3d\s+16\s+16$", done.stdout, re.MULTILINE), done.stdout
