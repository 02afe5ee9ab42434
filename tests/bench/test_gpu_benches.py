"""The GPU benchmarks run end to end in their ``--quick`` mode (tiny pipeline, CPU).

They are run on a lent GPU only rarely and with minutes to spare, so a change that breaks one must fail
here, not there. Each runs as a user runs it (a subprocess from the repository root) and must print its
figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"

# What each script must print, per measured configuration.
EXPECTED = {
    "gpu_editor.py": [
        rf"\[eager\] 64² .* forward b=1 {NUMBER} ms, b=2 {NUMBER} ms; transformer limit .* = {NUMBER} s",
        rf"\[eager\] 64² sampler batch=1: .* sampler/limit = {NUMBER}",
        rf"\[eager\] 64² sampler batch=2: .* sampler/limit = {NUMBER}",
        rf"\[eager\] 64² served POST /edit: {NUMBER} s per edit, served/limit = {NUMBER}, "
        rf"serving cost -?{NUMBER} ms per edit",
    ],
    "gpu_sft_step.py": [rf"rank \d+ .* 64² .*: {NUMBER} s/step, peak memory"],
    "gpu_rl_step.py": [
        rf"G=8 groups=2 .*: sampling {NUMBER} s, waiting for rewards {NUMBER} s "
        rf".* update {NUMBER} s, step {NUMBER} s, peak memory"
    ],
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_gpu_bench_runs_quick_and_prints_its_figures(script: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for pattern in EXPECTED[script]:
        assert re.search(pattern, result.stdout), f"{pattern!r} not in:\n{result.stdout}"
