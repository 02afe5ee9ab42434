"""The paper's corpus end to end, as docs/data.md ("The paper's corpus") walks it, on small fixtures
written in each source's published layout: all five families import, the RL set is mixed per family and
Eq. 1 filters it through a real reward service."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from etchr.manifest import read_manifest
from tests.data.test_box_sources import _refchart_release, _vstar_release
from tests.data.test_view_sources import _orbit, _ssrl_release
from tests.editor.test_rl_filter import reward_service
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer

FAMILIES = ("perception", "chart", "logic", "jigsaw", "3d")


def etchr(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "etchr_tools.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def _digest(data_url: str) -> str:
    return hashlib.sha256(base64.b64decode(data_url.split(",", 1)[1])).hexdigest()


class AnswerKey:
    """U answers right exactly when it sees the true edit beside the original, worded as Qwen-VL does, and
    guesses wrong on the original alone; the open-answer judge (no image) says no: Eq. 1 keeps every row."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}

    def learn(self, manifest: Path) -> None:
        for row in read_manifest(manifest):
            image = (manifest.parent / row.image).resolve().read_bytes()
            self.answers[hashlib.sha256(image).hexdigest()] = row.answer

    def __call__(self, request: RecordedRequest) -> Reply:
        if not request.images:
            return Reply("The two answers do not mean the same thing.\n\n\\boxed{0}")
        answer = self.answers[_digest(request.images[0])]
        if len(request.images) == 2:
            text = f"The helper view makes it clear.\n\nFinal answer: \\boxed{{{answer}}}"
        else:
            text = "I can't make it out in this image, so I'll guess.\n\n\\boxed{none of these}"
        return Reply([text] * request.n)


@pytest.fixture(scope="module")
def key() -> AnswerKey:
    return AnswerKey()


@pytest.fixture(scope="module")
def mllm(key: AnswerKey) -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(key).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reward_url(redis_server: RedisServer, mllm: ScriptedMLLM) -> Iterator[str]:
    yield from reward_service(redis_server, mllm, "paper-corpus")


def test_five_families_import_mix_and_filter(tmp_path: Path, key: AnswerKey, reward_url: str) -> None:
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    _vstar_release(downloads / "seal_vqa_data")
    _refchart_release(downloads / "RefChartQA")
    _ssrl_release(downloads / "Spatial-SSRL")
    _orbit(downloads / "DL3DV-10K" / "1K" / "scene0")

    # 1. The five SFT corpora: four imported from their downloads, the mazes built.
    commands = {
        "perception": ["data", "import", "vstar-train", "--source", str(downloads / "seal_vqa_data")],
        "chart": ["data", "import", "refchartqa", "--source", str(downloads / "RefChartQA")],
        "logic": ["data", "build", "maze", "--n", "6", "--seed", "0"],
        "jigsaw": ["data", "import", "spatial-ssrl-jigsaw", "--source", str(downloads / "Spatial-SSRL")],
        "3d": ["data", "import", "dl3dv", "--source", str(downloads / "DL3DV-10K")],
    }
    for family, command in commands.items():
        done = etchr(*command, "--out", str(data / "sft" / family))
        manifest = data / "sft" / family / "manifest.jsonl"
        rows = list(read_manifest(manifest))
        assert rows and {row.task for row in rows} == {family}
        assert all(row.edited_image and (manifest.parent / row.edited_image).is_file() for row in rows)
        summary = [line.split() for line in done.stdout.splitlines()]
        assert [family, str(len(rows)), str(len(rows))] in summary  # family, rows, with edit
        key.learn(manifest)

    # 2. The RL set: two rows per family, drawn from all five.
    done = etchr(
        "data",
        "mix",
        *(str(data / "sft" / f) for f in FAMILIES),
        "--per-family",
        "2",
        "--out",
        str(data / "rl" / "mixed"),
    )
    mixed = list(read_manifest(data / "rl" / "mixed" / "manifest.jsonl"))
    assert Counter(row.task for row in mixed) == dict.fromkeys(FAMILIES, 2)
    assert "drew 10 rows" in done.stdout

    # 3. Eq. 1 through the reward service: U fails alone and succeeds with the true edit on every row.
    done = etchr(
        "train",
        "filter",
        "--data",
        str(data / "rl" / "mixed"),
        "--out",
        str(data / "rl" / "filtered"),
        "--reward-url",
        reward_url,
    )
    kept = list(read_manifest(data / "rl" / "filtered" / "manifest.jsonl"))
    report = json.loads((data / "rl" / "filtered" / "filter_summary.json").read_text())
    assert set(report["per_family"]) == set(FAMILIES)
    assert report["total"]["rows"] == 10
    assert {family: counts["kept"] for family, counts in report["per_family"].items()} == dict.fromkeys(
        FAMILIES, 2
    )
    assert {row.id for row in kept} == {row.id for row in mixed}
    results = [json.loads(line) for line in (data / "rl" / "filtered" / "filter_results.jsonl").open()]
    assert all((r["base_correct"], r["edit_correct"]) == (0.0, 1.0) for r in results)
    assert "kept 10 of 10 rows" in done.stdout
