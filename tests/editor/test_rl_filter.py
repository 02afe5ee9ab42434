"""`etchr train filter` (Eq. 1) through a real reward service: each clause decided on a majority of 4 sampled
decodings by default or on one greedy decoding with --greedy, and how many rows each clause dropped is
reported per family — in the printed table, OUT/filter_summary.json and OUT/filter_results.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from etchr.clients.reward import RewardClient
from etchr.manifest import ManifestRow, read_manifest, write_manifest
from etchr.settings import RewardSettings
from etchr_reward.api import create_app as create_reward_app
from etchr_train.rl_data import FilterReport, clause_table, filter_manifest
from tests.reward.test_filter import sampled
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import AppLauncher, mllm_wiring

QUESTION = "Which exit does the path reach? (A) left (B) right"

# id, family, (right of 4 sampled alone, greedy right alone), (the same with the true edit)
ROWS: list[tuple[str, str, tuple[int, int], tuple[int, int]]] = [
    ("p-keep", "perception", (0, 1), (4, 1)),
    ("p-easy", "perception", (3, 0), (4, 1)),
    ("p-weak-edit", "perception", (1, 0), (2, 1)),
    ("l-both", "logic", (2, 0), (1, 0)),
    ("l-keep", "logic", (0, 0), (3, 1)),
    ("j-both", "jigsaw", (4, 1), (0, 0)),
]
# family: rows, kept, dropped by clause 1 (right alone), dropped by clause 2 (wrong with edit), both
SAMPLED = {
    "perception": (3, 1, 1, 1, 0),
    "logic": (2, 1, 1, 1, 1),
    "jigsaw": (1, 0, 1, 1, 1),
    "all": (6, 2, 3, 3, 2),
}
GREEDY = {
    "perception": (3, 2, 1, 0, 0),
    "logic": (2, 1, 0, 1, 0),
    "jigsaw": (1, 0, 1, 1, 1),
    "all": (6, 3, 2, 2, 1),
}


def write_filter_corpus(out: Path) -> Path:
    """ROWS as a manifest in ``out``: each row's colours tell the scripted MLLM how to answer it."""
    (out / "images").mkdir()
    rows = []
    for index, (row_id, task, alone, with_edit) in enumerate(ROWS):
        # Red: right decodings of 4; green: the greedy decoding is right; blue: distinct images per row.
        Image.new("RGB", (32, 32), (alone[0], alone[1], index)).save(out / "images" / f"{row_id}.png")
        Image.new("RGB", (32, 32), (with_edit[0], with_edit[1], 50 + index)).save(
            out / "images" / f"{row_id}_edit.png"
        )
        rows.append(
            ManifestRow(
                id=row_id,
                task=task,
                image=f"images/{row_id}.png",
                question=QUESTION,
                answer="B",
                edited_image=f"images/{row_id}_edit.png",
            )
        )
    write_manifest(out / "manifest.jsonl", rows)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_filter_corpus(tmp_path_factory.mktemp("filter-set"))


@pytest.fixture(scope="module")
def mllm() -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(sampled).start()
    yield server
    server.stop()


def reward_service(redis_server: RedisServer, mllm: ScriptedMLLM, prefix: str) -> Iterator[str]:
    """The real reward service (in-process query workers) on the test MLLM: its URL, until closed. Each
    module gives its own ``prefix``, so no module reads verdicts another's MLLM gave."""
    launcher = AppLauncher(
        create_reward_app,
        RewardSettings,
        {
            **mllm_wiring(redis_server.url, prefix, mllm.base_url),
        },
    )
    yield launcher.launch()
    launcher.stop_all()


@pytest.fixture(scope="module")
def reward_url(redis_server: RedisServer, mllm: ScriptedMLLM) -> Iterator[str]:
    yield from reward_service(redis_server, mllm, "rl-filter-test")


def run_filter(corpus: Path, out: Path, reward_url: str, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "etchr_tools.cli", "train", "filter"]
    command += ["--data", str(corpus), "--out", str(out)]
    return subprocess.run(
        [*command, "--reward-url", reward_url, *options], capture_output=True, text=True, timeout=120
    )


def printed_table(stdout: str) -> dict[str, tuple[int, ...]]:
    """The family rows of the table the command prints: family → the five counts."""
    table = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in SAMPLED and len(cells) == 6:
            table[cells[0]] = tuple(int(cell) for cell in cells[1:])
    return table


def counts(report: dict[str, object], family: str) -> tuple[int, ...]:
    entry = report["total"] if family == "all" else report["per_family"][family]  # type: ignore[index]
    keys = ("rows", "kept", "dropped_right_alone", "dropped_wrong_with_edit", "dropped_both")
    return tuple(entry[key] for key in keys)  # type: ignore[index]


def test_cli_reports_each_clause_per_family_on_four_sampled_decodings(
    corpus: Path, reward_url: str, mllm: ScriptedMLLM, tmp_path: Path
) -> None:
    mllm.reset()
    done = run_filter(corpus, tmp_path / "sampled", reward_url)
    assert done.returncode == 0, done.stderr
    assert "majority of 4 decodings" in done.stdout
    assert printed_table(done.stdout) == SAMPLED
    assert "kept 2 of 6 rows" in done.stdout
    assert all(r.n == 4 and r.temperature == pytest.approx(0.7) for r in mllm.requests)

    report = json.loads((tmp_path / "sampled" / "filter_summary.json").read_text())
    assert (report["k"], report["greedy"]) == (4, False)
    assert {family: counts(report, family) for family in SAMPLED} == SAMPLED
    kept = [row.id for row in read_manifest(tmp_path / "sampled" / "manifest.jsonl")]
    assert kept == ["p-keep", "l-keep"]
    results = (tmp_path / "sampled" / "filter_results.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in results]
    assert [(line["id"], line["task"]) for line in lines] == [(row[0], row[1]) for row in ROWS]
    assert lines[3] == {
        "id": "l-both",
        "task": "logic",
        "base_correct": 0.5,  # right in half the decodings alone: not "fails alone"
        "edit_correct": 0.25,
        "fails_alone": False,
        "succeeds_with_edit": False,
        "keep": False,
    }


def test_cli_greedy_decides_on_one_decoding_at_temperature_zero(
    corpus: Path, reward_url: str, mllm: ScriptedMLLM, tmp_path: Path
) -> None:
    mllm.reset()
    done = run_filter(corpus, tmp_path / "greedy", reward_url, "--greedy")
    assert done.returncode == 0, done.stderr
    assert "one greedy decoding" in done.stdout
    assert printed_table(done.stdout) == GREEDY
    assert mllm.requests and all(r.n == 1 and r.temperature == 0 for r in mllm.requests)
    report = json.loads((tmp_path / "greedy" / "filter_summary.json").read_text())
    assert (report["k"], report["greedy"]) == (1, True)
    assert {family: counts(report, family) for family in GREEDY} == GREEDY

    clash = run_filter(corpus, tmp_path / "clash", reward_url, "--greedy", "--k", "4")
    assert clash.returncode == 2 and "greedy" in clash.stderr


def test_library_call_and_table(corpus: Path, reward_url: str, tmp_path: Path) -> None:
    with RewardClient(reward_url) as client:
        summary = filter_manifest(corpus, tmp_path / "lib", client, k=2)
    assert (summary.seen, summary.kept, summary.report.k) == (6, summary.report.total.kept, 2)
    assert FilterReport.model_validate_json(summary.report_path.read_text()) == summary.report
    table = clause_table(summary.report).splitlines()
    assert table[0].split()[:3] == ["family", "rows", "kept"]
    assert [line.split()[0] for line in table[1:]] == ["perception", "logic", "jigsaw", "all"]
    with RewardClient(reward_url) as client, pytest.raises(ValueError, match="greedy"):
        filter_manifest(corpus, tmp_path / "bad", client, k=4, greedy=True)
