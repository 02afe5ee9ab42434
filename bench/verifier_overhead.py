"""EVR orchestration overhead and what speculative fallback saves, with an MLLM at a fixed latency.

Starts the tiny editor (its own Redis), the test MLLM server from tests/support (every reply after
``--mllm-latency`` seconds), and two ``etchr serve verifier`` processes (speculative fallback on / off).
Measured side by side in one run (medians):
  - the unavoidable parts: one edit (POST /edit to the editor) and one MLLM call;
  - /answer in evr when the edit is accepted: ÷ (edit + verify + reason), the sequential critical path;
  - /answer in evr when the edit is rejected, speculative vs sequential fallback.

    python bench/verifier_overhead.py --mllm-latency 0.2
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
from local_stack import editor_stack, free_port, wait_ready
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the test MLLM server in tests/support
from etchr.tasks import JUDGE_REPLY_CONVENTION
from etchr_editor.tiny import save_tiny_editor
from tests.support.mllm_server import RecordedRequest, ScriptedMLLM

JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it


def median_s(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mllm-latency", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    verdict = {"value": "1"}

    def respond(request: RecordedRequest) -> str:
        return verdict["value"] if JUDGE_MARK in request.text else "\\boxed{B}"

    buffer = io.BytesIO()
    Image.new("RGB", (args.size, args.size), (30, 160, 60)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    question = "Which exit does the path reach? (A) left (B) right"

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model = str(save_tiny_editor(work / "tiny"))
        editor_url = stack.enter_context(
            editor_stack(model, "cpu", {"ETCHR_EDITOR_STEPS": str(args.steps), "ETCHR_EDITOR_MAX_BATCH": "1"})
        )
        mllm = stack.enter_context(ScriptedMLLM(respond, latency_s=args.mllm_latency))
        verifiers = {}
        for speculative in (True, False):
            port = free_port()
            env = {
                **os.environ,
                "ETCHR_EDITOR_URL": editor_url,
                "ETCHR_MLLM_BASE_URL": mllm.base_url,
                "ETCHR_MLLM_MODEL": "bench-vlm",
                "ETCHR_REDIS_URL": "redis://127.0.0.1:1/0",  # the route cache is not used (task given)
                "ETCHR_VERIFIER_SPECULATIVE": str(speculative).lower(),
            }
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "etchr_tools.cli",
                    "serve",
                    "verifier",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                env=env,
            )
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
            verifiers[speculative] = f"http://127.0.0.1:{port}"
            wait_ready(verifiers[speculative])

        http = stack.enter_context(httpx.Client(timeout=600))
        client = openai.OpenAI(base_url=mllm.base_url, api_key="unused", max_retries=0)
        edit_body = {"image": image, "question": question, "task": "logic", "seed": 1}
        answer_body = {**edit_body, "mode": "evr"}
        answer_body.pop("seed")

        def edit() -> None:
            http.post(f"{editor_url}/edit", json=edit_body).raise_for_status()

        def mllm_call() -> None:
            client.chat.completions.create(model="bench-vlm", messages=[{"role": "user", "content": "hi"}])

        def answer(url: str) -> Callable[[], None]:
            def run() -> None:
                response = http.post(f"{url}/answer", json=answer_body)
                response.raise_for_status()

            return run

        edit_s = median_s(edit, args.rounds)
        call_s = median_s(mllm_call, args.rounds)
        accepted_s = median_s(answer(verifiers[True]), args.rounds)
        verdict["value"] = "0"
        rejected_spec_s = median_s(answer(verifiers[True]), args.rounds)
        rejected_seq_s = median_s(answer(verifiers[False]), args.rounds)

    critical = edit_s + 2 * call_s
    print(
        f"tiny editor {args.size}², {args.steps} steps, CPU; MLLM latency {args.mllm_latency:g} s; "
        f"rounds={args.rounds}"
    )
    print(f"{'measurement':<44}{'median s':>10}{'ratio':>9}")
    print(f"{'edit alone (POST /edit)':<44}{edit_s:>10.3f}")
    print(f"{'one MLLM call':<44}{call_s:>10.3f}")
    print(
        f"{'evr, edit accepted':<44}{accepted_s:>10.3f}{accepted_s / critical:>9.3f}"
        "  ÷ (edit + verify + reason)"
    )
    print(
        f"{'evr, edit rejected, speculative fallback':<44}{rejected_spec_s:>10.3f}"
        f"{rejected_spec_s / (edit_s + call_s):>9.3f}  ÷ (edit + verify)"
    )
    print(
        f"{'evr, edit rejected, sequential fallback':<44}{rejected_seq_s:>10.3f}"
        f"{rejected_seq_s / (edit_s + 2 * call_s):>9.3f}  ÷ (edit + verify + reason)"
    )
    print(
        f"speculative saves {rejected_seq_s - rejected_spec_s:.3f} s "
        f"({1 - rejected_spec_s / rejected_seq_s:.1%}) on a rejected edit"
    )


if __name__ == "__main__":
    main()
