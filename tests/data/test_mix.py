"""`etchr data mix`: the stratified RL set, drawn per family from several manifests, then Eq. 1's filter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from etchr.manifest import ManifestRow, read_manifest, write_manifest
from etchr_tools.data.mix import mix_manifests, mix_table
from tests.editor.test_rl_filter import ROWS, reward_url, run_filter, write_filter_corpus  # noqa: F401
from tests.reward.test_filter import sampled
from tests.support.mllm_server import ScriptedMLLM


def write_corpus(root: Path, rows: list[tuple[str, str, bool]]) -> Path:
    """A manifest in ``root`` with one small distinct image (and target edit unless told not) per row."""
    (root / "images").mkdir(parents=True)
    manifest_rows = []
    for index, (row_id, task, with_edit) in enumerate(rows):
        Image.new("RGB", (16, 16), (index, 0, 0)).save(root / "images" / f"{row_id}.png")
        if with_edit:
            Image.new("RGB", (16, 16), (index, 255, 0)).save(root / "images" / f"{row_id}_edit.png")
        manifest_rows.append(
            ManifestRow(
                id=row_id,
                task=task,
                image=f"images/{row_id}.png",
                question="Which way? (A) left (B) right",
                answer="B",
                edited_image=f"images/{row_id}_edit.png" if with_edit else None,
                scorer="option",
                meta={"source": {"benchmark": root.name, "index": index}},
            )
        )
    write_manifest(root / "manifest.jsonl", manifest_rows)
    return root / "manifest.jsonl"


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    first = write_corpus(
        tmp_path / "src" / "boxes",
        [(f"p{i}", "perception", True) for i in range(5)] + [("c0", "chart", True), ("c1", "chart", False)],
    )
    second = write_corpus(
        tmp_path / "elsewhere" / "mazes",
        [(f"l{i}", "logic", True) for i in range(4)] + [("p0", "perception", True)],  # p0: an id clash
    )
    return first, second


def test_draws_per_family_from_several_manifests(two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "rl-set"
    report = mix_manifests(list(two_sources), out, per_family=3, seed=7, progress=False)
    rows = list(read_manifest(out / "manifest.jsonl"))

    assert Counter(row.task for row in rows) == {"perception": 3, "logic": 3, "chart": 1}
    assert report.short() == ["chart"]  # one usable chart row: c1 has no target edit
    chart = report.families["chart"]
    assert (chart.available, chart.skipped_no_edit, chart.drawn) == (2, 1, 1)
    assert report.families["perception"].available == 6
    # Ids are unique; the clashing p0s keep their id with the input's position.
    ids = [row.id for row in rows]
    assert len(set(ids)) == len(ids)
    assert all(row.id in {"p0@0", "p0@1"} for row in rows if row.id.startswith("p0"))
    # Paths point from the new folder at the same files; nothing was copied.
    for row in rows:
        assert (out / row.image).resolve().is_file() and (out / row.edited_image).resolve().is_file()
        assert not (out / "images").exists()
    source_rows = {(k, row.id): row for k, path in enumerate(two_sources) for row in read_manifest(path)}
    for row in rows:
        k = int(row.id.split("@")[1]) if "@" in row.id else (0 if row.task != "logic" else 1)
        original = source_rows[(k, row.id.split("@")[0])]
        assert (out / row.image).resolve() == (two_sources[k].parent / original.image).resolve()
        assert (row.question, row.answer, row.scorer, row.meta) == (
            original.question,
            original.answer,
            original.scorer,
            original.meta,
        )

    summary = json.loads((out / "mix_summary.json").read_text())
    assert summary["drawn"] == 7 and summary["families"]["chart"]["skipped_no_edit"] == 1
    assert summary["families"]["logic"]["by_manifest"] == {str(two_sources[1]): 3}
    table = mix_table(report).splitlines()
    assert table[0].split() == ["family", "available", "no", "edit", "drawn"]
    assert "chart" in table[2] and "short of 3" in table[2]
    assert table[-1].split() == ["all", "12", "1", "7"]


def test_same_seed_same_set_other_seed_other_draw(two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    def drawn(seed: int, name: str) -> list[str]:
        mix_manifests(list(two_sources), tmp_path / name, per_family=2, seed=seed, progress=False)
        return [row.id for row in read_manifest(tmp_path / name / "manifest.jsonl")]

    assert drawn(1, "a") == drawn(1, "b")
    assert any(sorted(drawn(seed, f"s{seed}")) != sorted(drawn(1, "a")) for seed in range(2, 8))


def test_families_and_edits_options(two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    report = mix_manifests(
        list(two_sources), tmp_path / "o", per_family=5, families=["chart", "3d"], require_edit=False
    )
    assert {name: family.drawn for name, family in report.families.items()} == {"chart": 2, "3d": 0}
    assert report.short() == ["chart", "3d"]
    with pytest.raises(ValueError, match="unknown families"):
        mix_manifests(list(two_sources), tmp_path / "x", families=["maze"])
    with pytest.raises(ValueError, match="not found"):
        mix_manifests([tmp_path / "nowhere"], tmp_path / "y")
    with pytest.raises(ValueError, match="at least 1"):
        mix_manifests(list(two_sources), tmp_path / "z", per_family=0)


def test_cli_prints_the_family_table(two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "etchr_tools.cli", "data", "mix", *map(str, two_sources)]
    done = subprocess.run(
        [*command, "--out", str(out), "--per-family", "2", "--seed", "3"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "drew 5 rows" in done.stdout and "short of 2" in done.stdout
    assert sum(1 for _ in read_manifest(out / "manifest.jsonl")) == 5
    bad = subprocess.run([*command, "--out", str(out), "--family", "maze"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown families" in bad.stderr


@pytest.fixture(scope="module")
def mllm() -> ScriptedMLLM:
    server = ScriptedMLLM(sampled).start()
    yield server
    server.stop()


def test_a_mixed_set_is_filtered_by_eq1(reward_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Mix the filter test's rows from two manifests, then `etchr train filter` the set: the rows kept are
    those of the drawn rows that Eq. 1 keeps (the scripted MLLM decides by each image's colours)."""
    (tmp_path / "whole").mkdir()
    whole = write_filter_corpus(tmp_path / "whole")  # the same images as the filter test
    rows = list(read_manifest(whole / "manifest.jsonl"))
    parts = []
    for name, tasks in (("a", {"perception"}), ("b", {"logic", "jigsaw"})):
        part = whole / name
        part.mkdir()
        picked = [
            r.model_copy(update={"image": f"../{r.image}", "edited_image": f"../{r.edited_image}"})
            for r in rows
            if r.task in tasks
        ]
        write_manifest(part / "manifest.jsonl", picked)
        parts.append(part)
    report = mix_manifests(parts, tmp_path / "rl-set", per_family=2, seed=0, progress=False)
    drawn = {row.id for row in read_manifest(tmp_path / "rl-set" / "manifest.jsonl")}
    assert {name: f.drawn for name, f in report.families.items()} == {
        "perception": 2,
        "logic": 2,
        "jigsaw": 1,
    }

    done = run_filter(tmp_path / "rl-set", tmp_path / "filtered", reward_url)
    assert done.returncode == 0, done.stderr
    kept = {row.id for row in read_manifest(tmp_path / "filtered" / "manifest.jsonl")}
    assert kept == drawn & {"p-keep", "l-keep"}  # ROWS' keepers under four sampled decodings
    assert {row[0] for row in ROWS} >= drawn
