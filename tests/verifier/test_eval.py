"""`etchr eval` end to end: a manifest through the verifier (tiny editor, test MLLM), scored, resumable."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

from etchr.manifest import ManifestRow, write_manifest
from etchr_tools.eval.harness import Evaluator, RowResult, load_results
from etchr_tools.eval.report import markdown_table, summarize, write_report
from tests.editor.test_api import png_b64
from tests.support.mllm_server import Reply, ScriptedMLLM
from tests.verifier.conftest import Script, VerifierFactory


def make_manifest(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, (task, answer, scorer, meta) in enumerate(
        [
            ("logic", "B", "option", {"path": [[0, 0], [0, 1], [1, 1]]}),
            ("logic", "B", "option", {"path": [[0, 0], [0, 1], [0, 2], [1, 2], [2, 2]]}),
            ("chart", "42", None, {"source": {"benchmark": "chartqa", "id": 7, "category": "human"}}),
            ("perception", "a red bicycle leaning on the wall", None, {"source": {"benchmark": "vstar"}}),
        ]
    ):
        (root / "images" / f"{i}.png").write_bytes(base64.b64decode(png_b64(64 + 16 * i, 64)))
        rows.append(
            ManifestRow(
                id=f"row{i}",
                task=task,
                image=f"images/{i}.png",
                question=f"Question {i}? (A) x (B) y",
                answer=answer,
                scorer=scorer,
                meta=meta,
            )
        )
    path = root / "manifest.jsonl"
    write_manifest(path, rows)
    return path


def evaluate(url: str, manifest: Path, out: Path, modes: list[str]):
    async def run():
        evaluator = Evaluator(url, concurrency=4)
        try:
            return await evaluator.run(manifest, modes, out, progress=False)
        finally:
            await evaluator.aclose()

    return asyncio.run(run())


def test_eval_scores_writes_the_table_and_resumes(
    verifier: VerifierFactory, mllm: ScriptedMLLM, tmp_path: Path
) -> None:
    url = verifier()
    manifest = make_manifest(tmp_path / "corpus")
    out = tmp_path / "eval"
    run = evaluate(url, manifest, out, ["direct", "evr"])
    assert (run.recorded, run.skipped, run.failed) == (8, 0, [])

    results = {(r.id, r.mode): r for r in load_results(out / "results.jsonl")}
    assert results[("row0", "evr")].correct and results[("row0", "evr")].used_edit
    assert not results[("row0", "direct")].correct
    assert results[("row1", "evr")].path_length == 4
    open_answer = results[("row3", "evr")]
    assert not open_answer.correct and open_answer.undecided  # no judge configured: counted wrong, flagged

    summary = summarize(list(results.values()))
    cells = {(r["mode"], r["task"]): r for r in summary["rows"]}
    assert cells[("direct", "logic")]["pass_at_1"] == 0.0 and cells[("evr", "logic")]["pass_at_1"] == 100.0
    assert cells[("evr", "overall")] == {
        "mode": "evr",
        "task": "overall",
        "n": 4,
        "correct": 2,
        "pass_at_1": 50.0,
        "edit_used": 100.0,
    }

    # Imported rows keep meta.source, so results group the way each benchmark reports them.
    assert results[("row2", "direct")].source == {"benchmark": "chartqa", "id": 7, "category": "human"}
    assert results[("row0", "direct")].source is None
    groups = {(r["mode"], r["group"]): r for r in summary["by_source"]}
    assert set(groups) == {(m, g) for m in ("direct", "evr") for g in ("chartqa · human", "vstar")}
    for (mode, group), cell in groups.items():
        row = "row2" if group.startswith("chartqa") else "row3"
        assert cell["n"] == 1 and cell["pass_at_1"] == 100.0 * results[(row, mode)].correct

    written = write_report(list(results.values()), out)
    assert json.loads(written["json"].read_text()) == summary
    table = written["md"].read_text()
    assert "| logic | 2 | 0.00 | 100.00 | +100.00 |" in table
    by_source = table.split("## By benchmark and category (imported rows)")[1]
    assert "| group | n | direct Pass@1 | evr Pass@1 | Δ evr |" in by_source
    assert "| vstar | 1 | 0.00 | 0.00 | +0.00 |" in by_source and "overall" not in by_source
    for key in ("chart", "path_chart"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    seen = len(mllm.requests)
    again = evaluate(url, manifest, out, ["direct", "evr"])
    assert (again.recorded, again.skipped) == (0, 8) and len(mllm.requests) == seen


def test_eval_cli_records_nothing_for_failed_requests_and_a_rerun_finishes(
    verifier: VerifierFactory, mllm: ScriptedMLLM, script: Script, tmp_path: Path
) -> None:
    url = verifier()
    manifest = make_manifest(tmp_path / "corpus")
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "etchr_tools.cli",
        "eval",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--modes",
        "direct",
        "--no-progress",
    ]
    env = {"ETCHR_VERIFIER_URL": url, "PATH": "/usr/bin:/bin"}

    mllm.responder = lambda request: Reply(status=503, content="overloaded")
    down = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1, down.stdout + down.stderr
    assert "4 requests failed and were not recorded" in down.stderr
    assert load_results(out / "results.jsonl") == []

    mllm.responder = script
    up = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "recorded 4, skipped 0" in up.stdout and "| **overall** | 4 |" in up.stdout
    assert (out / "summary.md").exists()


def test_delta_is_computed_from_counts_not_rounded_rates() -> None:
    def result(i: int, mode: str, correct: bool) -> RowResult:
        return RowResult(
            id=f"r{i}", mode=mode, task="chart", correct=correct, expected="1", answer="", raw_answer="",
            used_edit=mode == "evr",
        )  # fmt: skip

    results = [result(i, "direct", i == 0) for i in range(3)] + [result(i, "evr", i < 2) for i in range(3)]
    table = markdown_table(summarize(results))
    # 66.67 - 33.33 would say +33.34; the true difference is 33.333…
    assert "| chart | 3 | 33.33 | 66.67 | +33.33 |" in table
