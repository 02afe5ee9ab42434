"""`etchr eval` with a judge: open answers go to the same open-answer fallback as the reward service's, with
the budget ETCHR_EVAL_JUDGE_MAX_TOKENS configures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from etchr_tools.eval.harness import load_results
from tests.support.mllm_server import ScriptedMLLM
from tests.verifier.conftest import Script, VerifierFactory
from tests.verifier.test_eval import make_manifest

# A Qwen3-style thinking judge: numbers in its reasoning, the verdict boxed after it.
THINKING_YES = (
    "<think>\nThe reference is a red bicycle leaning on the wall. The model says a red bike by the wall: "
    "1 bike, same colour, same place.\n</think>\n\nBoth name the same object.\n\n\\boxed{1}"
)


def test_eval_judges_open_answers_with_its_configured_budget(
    verifier: VerifierFactory, script: Script, tmp_path: Path
) -> None:
    url = verifier()
    script.direct_answer = "A bike is leaning there.\n\\boxed{a red bike by the wall}"
    manifest = make_manifest(tmp_path / "corpus")
    out = tmp_path / "eval"
    with ScriptedMLLM(lambda request: THINKING_YES) as judge:
        env = {
            "ETCHR_VERIFIER_URL": url,
            "ETCHR_JUDGE_BASE_URL": judge.base_url,
            "ETCHR_JUDGE_MODEL": "test-judge",
            "ETCHR_EVAL_JUDGE_MAX_TOKENS": "555",
            "PATH": "/usr/bin:/bin",
        }
        command = [sys.executable, "-m", "etchr_tools.cli", "eval", "--manifest", str(manifest)]
        command += ["--out", str(out), "--modes", "direct", "--no-progress"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    results = {r.id: r for r in load_results(out / "results.jsonl")}
    open_answer = results["row3"]
    assert (open_answer.correct, open_answer.undecided, open_answer.rule) == (True, False, "open")
    assert not any(results[row].correct or results[row].undecided for row in ("row0", "row1", "row2"))
    (asked,) = judge.requests  # only the open answer: the rules decide the others
    assert asked.max_tokens == 555 and asked.temperature == 0 and asked.image_count == 0
    assert "Model's answer: a red bike by the wall" in asked.text
    assert "Reference answer: a red bicycle leaning on the wall" in asked.text
