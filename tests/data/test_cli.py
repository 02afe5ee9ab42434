"""`etchr data build` / `etchr data import` as users run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from etchr.manifest import read_manifest


def etchr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etchr_tools.cli", *args], capture_output=True, text=True, timeout=120
    )


def flat(text: str) -> str:
    """The message without rich's box and line wrapping (long paths wrap mid-word)."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def test_data_build_writes_a_manifest_and_refuses_unknown_options(tmp_path: Path) -> None:
    out = tmp_path / "lake"
    done = etchr("data", "build", "frozenlake", "--n", "2", "--out", str(out), "--seed", "3", "-o", "size=5")
    assert done.returncode == 0, done.stderr
    rows = list(read_manifest(out / "manifest.jsonl"))
    assert len(rows) == 2 and all(len(row.meta["map"]) == 5 for row in rows)  # type: ignore[index]
    assert all((out / row.image).is_file() and (out / str(row.edited_image)).is_file() for row in rows)

    bad = etchr("data", "build", "maze", "--n", "1", "--out", str(tmp_path / "x"), "-o", "wals=3")
    assert bad.returncode == 2 and "unknownoption(s)wals" in flat(bad.stderr)


def test_data_import_names_what_is_missing(tmp_path: Path) -> None:
    done = etchr(
        "data", "import", "chartqa", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2 and f"{tmp_path}/nowhere".replace(" ", "") in flat(done.stderr)
    unknown = etchr("data", "import", "mmlu", "--source", str(tmp_path), "--out", str(tmp_path / "o"))
    assert unknown.returncode == 2 and "vstar" in flat(unknown.stderr)


def test_data_import_passes_importer_options_and_refuses_unknown_ones(tmp_path: Path) -> None:
    from tests.data.test_view_sources import _orbit

    _orbit(tmp_path / "dl3dv" / "scene")
    out = tmp_path / "pairs"
    common = ["data", "import", "dl3dv", "--source", str(tmp_path / "dl3dv"), "--out", str(out)]
    done = etchr(*common, "-o", "pairs_per_scene=3", "-o", "rotation=10,40", "-o", "templates=turn-direction")
    assert done.returncode == 0, done.stderr
    rows = list(read_manifest(out / "manifest.jsonl"))
    assert len(rows) == 3 and {row.meta["template"] for row in rows} == {"turn-direction"}  # type: ignore[index]
    assert all(10 <= row.meta["rotation"]["degrees"] <= 40 for row in rows)  # type: ignore[index]
    assert re.search(r"3d\s+3\s+3", done.stdout)  # the per-family summary: rows, with edit

    bad = etchr(*common, "-o", "pairs=3")
    assert bad.returncode == 2 and "dl3dvhasnooptionpairs" in flat(bad.stderr)
    none = etchr("data", "import", "chartqa", "--source", str(tmp_path), "--out", str(out), "-o", "x=1")
    assert none.returncode == 2 and "ittakesnone" in flat(none.stderr)
