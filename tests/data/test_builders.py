"""Corpus builders: every row re-checked from its meta, determinism per seed, scorability by match_answer."""

from __future__ import annotations

import json
from collections import deque
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image

from etchr.answers import match_answer
from etchr.manifest import ManifestRow, read_manifest
from etchr_tools.data.build import build_corpus
from etchr_tools.data.frozenlake import simulate
from etchr_tools.data.jigsaw import assemble, tiles_of

STEP = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}


def _bfs_len(height: int, width: int, blocked: set[tuple[int, int]], start, goal) -> int | None:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        if (r, c) == goal:
            return dist[(r, c)]
        for dr, dc in STEP.values():
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < height and 0 <= nxt[1] < width and nxt not in blocked and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return None


def _build(kind: str, tmp_path: Path, n: int = 6, seed: int = 0, **options) -> tuple[Path, list[ManifestRow]]:
    manifest = build_corpus(kind, n=n, out=tmp_path / f"{kind}-{seed}", seed=seed, progress=False, **options)
    return manifest, list(read_manifest(manifest))


def _image(manifest: Path, rel: str | None) -> Image.Image:
    assert rel is not None and not Path(rel).is_absolute()
    path = manifest.parent / rel
    assert path.is_file()
    return Image.open(path).convert("RGB")


def _check_scorable(row: ManifestRow, wrong: str) -> None:
    assert match_answer(row.answer, row.answer, scorer=row.scorer, meta=row.meta).correct is True
    assert match_answer(f"Answer: {row.answer}", row.answer, scorer=row.scorer, meta=row.meta).correct is True
    assert match_answer(wrong, row.answer, scorer=row.scorer, meta=row.meta).correct is False


def _wrong_letter(answer: str) -> str:
    return "A" if answer != "A" else "B"


# ------------------------------------------------------------------------------------------------- maze


def test_maze_rows_recheck_from_meta(tmp_path: Path) -> None:
    manifest, rows = _build("maze", tmp_path, n=8, rows=(7, 11), cols=(7, 13), openings=0.1)
    assert len(rows) == 8
    forms = set()
    for row in rows:
        meta = row.meta
        assert row.task == "logic" and set(meta) == {"grid", "start", "goal", "path"}
        grid = meta["grid"]
        h, w = len(grid), len(grid[0])
        blocked = {(r, c) for r in range(h) for c in range(w) if grid[r][c] == 1}
        assert all(v in (0, 1) for line in grid for v in line)
        path = [tuple(cell) for cell in meta["path"]]
        assert path[0] == tuple(meta["start"]) and path[-1] == tuple(meta["goal"])
        for a, b in pairwise(path):
            assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1
        assert not set(path) & blocked
        assert len(path) - 1 == _bfs_len(h, w, blocked, path[0], path[-1])
        image, edit = _image(manifest, row.image), _image(manifest, row.edited_image)
        assert image.size == edit.size and image.tobytes() != edit.tobytes()
        forms.add(row.scorer)
        if row.scorer == "path":
            moves = row.answer
            assert len(moves) == len(path) - 1
            _check_scorable(row, moves[:-1] or "U")
        else:
            assert row.scorer == "option" and f"({row.answer}) {len(path) - 1}\n" in row.question
            _check_scorable(row, _wrong_letter(row.answer))
    assert forms == {"path", "option"}  # "mixed" by default


def test_maze_path_length_range(tmp_path: Path) -> None:
    _, rows = _build("maze", tmp_path, n=5, rows=9, cols=9, min_path=6, max_path=8, question_form="open")
    assert all(6 <= len(row.meta["path"]) - 1 <= 8 for row in rows)
    assert all(row.scorer == "path" for row in rows)


def test_maze_impossible_range_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shortest path of 500"):
        build_corpus("maze", n=1, out=tmp_path, progress=False, rows=7, cols=7, min_path=500, max_tries=5)
    with pytest.raises(ValueError, match="min_path"):
        build_corpus("maze", n=1, out=tmp_path, progress=False, min_path=5, max_path=3)


# -------------------------------------------------------------------------------------------- frozenlake


def test_frozenlake_rows_recheck_from_meta(tmp_path: Path) -> None:
    manifest, rows = _build("frozenlake", tmp_path, n=8, size=(4, 6), hole_prob=0.3)
    forms = set()
    for row in rows:
        assert row.task == "logic" and set(row.meta) == {"map", "moves"}
        lake, moves = row.meta["map"], row.meta["moves"]
        cells = {(r, c): ch for r, line in enumerate(lake) for c, ch in enumerate(line)}
        start = next(cell for cell, ch in cells.items() if ch == "S")
        goal = next(cell for cell, ch in cells.items() if ch == "G")
        pos = start
        for move in moves:
            pos = (pos[0] + STEP[move][0], pos[1] + STEP[move][1])
            assert cells[pos] != "H"
        assert pos == goal and simulate(lake, moves)
        holes = {cell for cell, ch in cells.items() if ch == "H"}
        assert len(moves) == _bfs_len(len(lake), len(lake[0]), holes, start, goal)
        assert _image(manifest, row.image).tobytes() != _image(manifest, row.edited_image).tobytes()
        forms.add(row.scorer)
        if row.scorer == "frozenlake":
            assert row.answer == moves
            _check_scorable(row, moves[:-1] or "L")
        else:
            assert row.scorer == "option" and f"({row.answer}) {moves}\n" in row.question
            _check_scorable(row, _wrong_letter(row.answer))
    assert forms == {"frozenlake", "option"}


# ------------------------------------------------------------------------------------------------ jigsaw


@pytest.mark.parametrize("markings", [True, False])
def test_jigsaw_permutation_reproduces_edit(tmp_path: Path, markings: bool) -> None:
    manifest, rows = _build("jigsaw", tmp_path, n=4, rows=(2, 3), cols=(2, 3), size=96, markings=markings)
    for row in rows:
        assert row.task == "jigsaw" and set(row.meta) == {"rows", "cols", "permutation"}
        r, c, perm = row.meta["rows"], row.meta["cols"], row.meta["permutation"]
        assert sorted(perm) == list(range(r * c)) and perm != sorted(perm)
        tiles = tiles_of(_image(manifest, row.image), r, c)
        restored = assemble([tiles[d] for d in perm], r, c)
        assert restored.tobytes() == _image(manifest, row.edited_image).tobytes()
        assert row.answer == json.dumps(perm)
        wrong = list(reversed(perm)) if list(reversed(perm)) != perm else perm[1:] + perm[:1]
        _check_scorable(row, json.dumps(wrong))


def test_jigsaw_source_dir_and_mc(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gradient = Image.linear_gradient("L").convert("RGB")  # 256x256, every row different
    gradient.save(src / "a.png")
    _, rows = _build("jigsaw", tmp_path, n=3, source_dir=src, rows=2, cols=2, question_form="mc")
    for row in rows:
        assert row.scorer == "option"
        _check_scorable(row, _wrong_letter(row.answer))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        build_corpus("jigsaw", n=1, out=tmp_path / "x", progress=False, source_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder"):
        build_corpus("jigsaw", n=1, out=tmp_path / "x", progress=False, source_dir=tmp_path / "missing")


# -------------------------------------------------------------------------------------------------- bbox


def _user_manifest(tmp_path: Path) -> Path:
    folder = tmp_path / "user"
    (folder / "pics").mkdir(parents=True)
    Image.new("RGB", (200, 100), (255, 255, 255)).save(folder / "pics" / "one.png")
    Image.new("RGB", (120, 160), (0, 0, 0)).save(folder / "pics" / "two.jpg")
    lines = [
        {
            "id": "v/1",
            "image": "pics/one.png",
            "boxes": [[20, 10, 80, 60]],
            "question": "What color?",
            "answer": "red",
        },
        {
            "id": "c2",
            "image": "pics/two.jpg",
            "boxes": [[10, 10, 50, 50], [60, 80, 110, 150]],
            "question": "Which bar is taller?",
            "answer": "B",
            "task": "chart",
            "choices": ["left", "right"],
        },
    ]
    path = folder / "rows.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_bbox_draws_red_outlines(tmp_path: Path) -> None:
    source = _user_manifest(tmp_path)
    manifest, rows = _build("bbox", tmp_path, n=10, source_manifest=source)
    assert [row.id for row in rows] == ["v_1", "c2"] and [row.task for row in rows] == ["perception", "chart"]
    assert rows[0].image.endswith(".png") and rows[1].image.endswith(".jpg")
    assert (manifest.parent / rows[1].image).read_bytes() == (source.parent / "pics" / "two.jpg").read_bytes()
    for row in rows:
        edit = _image(manifest, row.edited_image)
        for x0, y0, x1, y1 in row.meta["boxes"]:
            for x, y in ((x0, y0), (x1, y1), ((x0 + x1) // 2, y0), (x0, (y0 + y1) // 2)):
                assert edit.getpixel((int(x), int(y))) == (255, 0, 0)
            assert edit.getpixel((int(x0 + x1) // 2, int(y0 + y1) // 2)) != (255, 0, 0)
    assert rows[1].scorer == "option" and "(B) right" in rows[1].question
    _check_scorable(rows[0], "blue")
    _check_scorable(rows[1], "A")


def test_bbox_requires_a_valid_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source_manifest"):
        build_corpus("bbox", n=1, out=tmp_path, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "image": "nope.png", "boxes": [], "question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing answer"):
        build_corpus("bbox", n=1, out=tmp_path, progress=False, source_manifest=bad)


# ----------------------------------------------------------------------------------------- determinism


def _snapshot(manifest: Path) -> dict[str, bytes]:
    return {p.relative_to(manifest.parent).as_posix(): p.read_bytes() for p in manifest.parent.rglob("*.*")}


@pytest.mark.parametrize(
    ("kind", "options"),
    [("maze", {"rows": 9, "cols": 9}), ("frozenlake", {"size": 4}), ("jigsaw", {"size": 64})],
)
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, kind: str, options: dict) -> None:
    first = build_corpus(kind, n=3, out=tmp_path / "a", seed=7, progress=False, **options)
    second = build_corpus(kind, n=3, out=tmp_path / "b", seed=7, progress=False, **options)
    other = build_corpus(kind, n=3, out=tmp_path / "c", seed=8, progress=False, **options)
    assert _snapshot(first) == _snapshot(second)
    assert (first.parent / "manifest.jsonl").read_bytes() != other.read_bytes()
    rows = list(read_manifest(first))
    again = [ManifestRow.model_validate_json(row.model_dump_json()) for row in rows]
    assert again == rows and all(row.edited_image for row in rows)


def test_unknown_kind_and_option_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus kind"):
        build_corpus("sudoku", n=1, out=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown option.*valid:"):
        build_corpus("maze", n=1, out=tmp_path, grid_size=9)


def test_progress_bar_runs(tmp_path: Path) -> None:
    manifest = build_corpus("frozenlake", n=2, out=tmp_path, progress=True, size=4)
    assert len(list(read_manifest(manifest))) == 2
