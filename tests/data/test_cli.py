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
