"""EVR orchestration overhead at real image sizes, MLLM at a fixed latency; two checkouts side by side.

Starts the test MLLM server from tests/support (every reply after ``--mllm-latency`` seconds), an editor, and
one ``etchr serve verifier`` process per variant (this checkout; ``--compare-tree``: another checkout, e.g.
the code before a change; ``--variant``: this checkout with other settings). For every input (``--sizes`` ×
``--formats``: a seeded synthetic photo — gradients, smooth colour fields and sensor noise — sent as JPEG
or PNG, JPEG about 10× smaller) it measures side by side, in one run, medians of ``--rounds``:

  - the unavoidable parts: one edit (``POST /edit`` to the editor, the input as the client sent it) and one
    MLLM call with the original and the edit attached (the input's own bytes, the edit as PNG);
  - ``/answer`` in evr when the judge accepts the edit, ÷ (edit + one MLLM call);
  - ``/answer`` in evr when the judge rejects it, ÷ (edit + one MLLM call);
  - the verifier's own CPU per answer: utime + stime of its process (/proc/<pid>/stat, all its threads) read
    before and after every sequential request, summed over the rounds (the MLLM, the editor stub and the
    client run in this process, not in the verifier).

The editor is by default a stand-in with a fixed latency (``--edit-latency``; it answers with a precomputed
edit of the input's size, as PNG or in the ``output_format`` asked for), so the ratios measure orchestration
and not the editor's CPU; ``--editor tiny`` uses the tiny checkpoint on CPU instead (its own Redis).

    python bench/verifier_overhead.py                    # 512² and 1024², JPEG and PNG, MLLM 0.5 s
    # the code before a change, side by side with the working tree:
    git worktree add --detach /tmp/before HEAD
    python bench/verifier_overhead.py --compare-tree /tmp/before
    git worktree remove --force /tmp/before
    # smoke run (64² PNG, 2 rounds, 0.1 s latencies): python bench/verifier_overhead.py --quick
    # the strict order or another setting, side by side: --variant strict:ETCHR_VERIFIER_...=...
"""

from __future__ import annotations

import argparse
import asyncio
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from local_stack import editor_stack, free_port, wait_ready, with_tree
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the test MLLM server in tests/support
from etchr.tasks import JUDGE_REPLY_CONVENTION
from tests.support.mllm_server import RecordedRequest, ScriptedMLLM
from tests.support.servers import UvicornThread

JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
QUESTION = "Which exit does the path reach? (A) left (B) right"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def photo(size: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients and colour fields plus sensor noise (JPEG ~10× below PNG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    gradient = np.stack([0.35 + 0.4 * x, 0.3 + 0.5 * y * (1 - x), 0.6 - 0.3 * y], axis=-1)
    fields = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    pixels = (0.6 * gradient + 0.4 * np.asarray(fields, dtype=np.float64) / 255) * 255
    pixels += rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **({"quality": 90} if fmt in ("jpeg", "webp") else {}))
    return buffer.getvalue()


class StubEditor:
    """``POST /edit`` after a fixed latency, answering a precomputed edit of the input's size (set by the
    bench per input), encoded once per format; ``/readyz`` and the verifier's credentials probe answer."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.size = 64
        self._encoded: dict[tuple[int, str], str] = {}
        app = FastAPI()

        @app.get("/readyz")
        async def readyz() -> dict[str, str]:
            return {"status": "ready"}

        @app.post("/edit")
        async def edit(request: Request) -> dict[str, Any]:
            body = await request.json()
            await asyncio.sleep(self.latency_s)
            return {
                "id": "stub",
                "task": body["task"],
                "prompt": body["question"],
                "images": [self.edited_b64(self.size, body.get("output_format") or "png")] * body.get("n", 1),
                "seeds": [0],
                "model": {"name": "stub"},
                "timings": {
                    "queue_ms": 0.0,
                    "infer_ms": self.latency_s * 1000,
                    "total_ms": self.latency_s * 1000,
                },
            }

        self._server = UvicornThread(app)

    def edited_b64(self, size: int, fmt: str) -> str:
        if (size, fmt) not in self._encoded:
            image = photo(size)
            ImageDraw.Draw(image).line([(0, size // 2), (size - 1, size // 3)], fill=(230, 30, 30), width=5)
            self._encoded[size, fmt] = base64.b64encode(encode(image, fmt)).decode()
        return self._encoded[size, fmt]

    def start(self) -> str:
        self._server.start()
        return self._server.url

    def stop(self) -> None:
        self._server.stop()


@dataclass
class Verifier:
    label: str
    url: str
    pid: int
    origin: str
    failed: str | None = None  # why its answers stopped counting (a 5xx, a wrong used_edit)
    samples: dict[str, list[float]] = field(default_factory=dict)  # "accepted"/"rejected" → seconds
    cpu_s: dict[str, float] = field(default_factory=dict)  # "accepted"/"rejected" → CPU seconds, summed


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_verifier(
    stack: ExitStack, label: str, env: dict[str, str], tree: Path | None, cli: str
) -> Verifier:
    env = with_tree(env, tree)
    origin = subprocess.run(
        [
            sys.executable,
            "-c",
            "import etchr.imaging, etchr_verifier.evr as m; print(m.__file__, etchr.imaging.__file__)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", cli, "serve", "verifier", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    stack.callback(proc.wait, 30)
    stack.callback(proc.terminate)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return Verifier(label=label, url=url, pid=proc.pid, origin=origin)


def ask(http: httpx.Client, verifier: Verifier, phase: str, body: dict[str, Any]) -> float | None:
    """One sequential ``/answer``: its seconds, or None (and ``verifier.failed`` set) when it went wrong."""
    started = time.perf_counter()
    response = http.post(f"{verifier.url}/answer", json=body)
    elapsed = time.perf_counter() - started
    time.sleep(0.05)  # let a cancelled call's clean-up land in this answer's CPU
    if response.status_code != 200:
        verifier.failed = f"{response.status_code} {response.text[:120]}"
    elif response.json()["used_edit"] != (phase == "accepted"):
        verifier.failed = f"used_edit={response.json()['used_edit']} on a {phase} edit"
    else:
        return elapsed
    print(f"{verifier.label}: {verifier.failed}", file=sys.stderr, flush=True)
    return None


def median_s(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    if not label or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"--variant LABEL:KEY=VALUE[,KEY=VALUE...], got {text!r}")
    return label, dict(pairs)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mllm-latency", type=float, default=0.5)
    parser.add_argument("--sizes", default="512,1024", help="input sides, comma-separated")
    parser.add_argument("--size", type=int, help="one input side (overrides --sizes)")
    parser.add_argument("--formats", default="jpeg,png", help="input formats: jpeg, png, webp")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--editor", choices=("stub", "tiny"), default="stub")
    parser.add_argument("--edit-latency", type=float, default=1.0, help="the stub editor's latency, s")
    parser.add_argument("--steps", type=int, default=4, help="the tiny editor's steps")
    parser.add_argument("--label", default="this tree", help="the first verifier's row label")
    parser.add_argument(
        "--tree",
        type=Path,
        help="run the first verifier from this checkout (default: this one, as installed)",
    )
    parser.add_argument("--compare-tree", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--compare-label", default="before")
    parser.add_argument("--compare-cli", default="etchr_tools.cli", help="that checkout's CLI module")
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        help="LABEL:ENV=VALUE[,ENV=VALUE]: one more verifier from this tree with these settings (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 64² PNG, 2 rounds, 0.1 s latencies"
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.formats, args.rounds, args.mllm_latency, args.edit_latency = 64, "png", 2, 0.1, 0.1
    sizes = [args.size] if args.size else [int(side) for side in args.sizes.split(",")]
    formats = [fmt.strip().lower() for fmt in args.formats.split(",")]

    verdict = {"value": "1"}

    def respond(request: RecordedRequest) -> str:
        return verdict["value"] if JUDGE_MARK in request.text else "\\boxed{B}"

    results: list[tuple[str, str, float, float, list[Verifier]]] = []
    with ExitStack() as stack:
        stub: StubEditor | None = None
        if args.editor == "stub":
            stub = StubEditor(args.edit_latency)
            editor_url = stub.start()
            stack.callback(stub.stop)
        else:
            from etchr_editor.tiny import save_tiny_editor

            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            model = str(save_tiny_editor(work / "tiny"))
            editor_url = stack.enter_context(
                editor_stack(
                    model, "cpu", {"ETCHR_EDITOR_STEPS": str(args.steps), "ETCHR_EDITOR_MAX_BATCH": "1"}
                )
            )
        mllm = stack.enter_context(ScriptedMLLM(respond, latency_s=args.mllm_latency))
        base_env = {
            **os.environ,
            "ETCHR_EDITOR_URL": editor_url,
            "ETCHR_MLLM_BASE_URL": mllm.base_url,
            "ETCHR_MLLM_MODEL": "bench-vlm",
            "ETCHR_REDIS_URL": "redis://127.0.0.1:1/0",  # the route cache is not used (task given)
        }
        specs: list[tuple[str, dict[str, str], Path | None, str]] = [
            (args.label, base_env, args.tree.resolve() if args.tree else None, "etchr_tools.cli")
        ]
        if args.compare_tree:
            specs.append((args.compare_label, base_env, args.compare_tree.resolve(), args.compare_cli))
        for label, settings in args.variant:
            specs.append((label, {**base_env, **settings}, None, "etchr_tools.cli"))
        verifiers = [start_verifier(stack, label, env, tree, cli) for label, env, tree, cli in specs]
        for verifier in verifiers:
            print(f"{verifier.label}: {verifier.origin}", flush=True)

        http = stack.enter_context(httpx.Client(timeout=600))
        for side in sizes:
            for fmt in formats:
                data = encode(photo(side, seed=side), fmt)
                image = base64.b64encode(data).decode()
                if stub is not None:
                    stub.size = side
                    edited_url = f"data:image/png;base64,{stub.edited_b64(side, 'png')}"
                else:  # the tiny editor's edit is a PNG of the input's size
                    edited_png = encode(photo(side, seed=side), "png")
                    edited_url = f"data:image/png;base64,{base64.b64encode(edited_png).decode()}"
                original_url = f"data:{MIME[fmt]};base64,{image}"
                edit_body = {"image": image, "question": QUESTION, "task": "logic", "seed": 1}
                answer_body = {"image": image, "question": QUESTION, "task": "logic", "mode": "evr"}
                call_body = {
                    "model": "bench-vlm",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": QUESTION},
                                {"type": "image_url", "image_url": {"url": original_url}},
                                {"type": "image_url", "image_url": {"url": edited_url}},
                            ],
                        }
                    ],
                }

                def edit(body: dict[str, Any] = edit_body) -> None:
                    http.post(f"{editor_url}/edit", json=body).raise_for_status()

                def mllm_call(body: dict[str, Any] = call_body) -> None:
                    http.post(f"{mllm.base_url}/chat/completions", json=body).raise_for_status()

                edit_s = median_s(edit, args.rounds)
                call_s = median_s(mllm_call, args.rounds)
                mllm.reset()
                for verifier in verifiers:
                    verifier.failed = None
                for phase, value in (("accepted", "1"), ("rejected", "0")):
                    verdict["value"] = value
                    for verifier in verifiers:  # warm-up, not counted
                        verifier.samples[phase] = []
                        verifier.cpu_s[phase] = 0.0
                        ask(http, verifier, phase, answer_body)
                    for _ in range(args.rounds):  # interleaved: load on the machine falls on all alike
                        for verifier in verifiers:
                            if verifier.failed is None:
                                cpu_before = cpu_seconds(verifier.pid)
                                elapsed = ask(http, verifier, phase, answer_body)
                                verifier.cpu_s[phase] += cpu_seconds(verifier.pid) - cpu_before
                                if elapsed is not None:
                                    verifier.samples[phase].append(elapsed)
                    mllm.reset()
                results.append(
                    (
                        f"{side}² {fmt} ({len(data) // 1024} KiB)",
                        fmt,
                        edit_s,
                        call_s,
                        [
                            Verifier(
                                v.label,
                                v.url,
                                v.pid,
                                v.origin,
                                failed=v.failed,
                                samples=dict(v.samples),
                                cpu_s=dict(v.cpu_s),
                            )
                            for v in verifiers
                        ],
                    )
                )

    editor = (
        f"stub editor, {args.edit_latency:g} s"
        if args.editor == "stub"
        else f"tiny editor, {args.steps} steps, CPU"
    )
    print(
        f"\n{editor}; MLLM latency {args.mllm_latency:g} s; medians of {args.rounds} rounds; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(
        "| input | verifier | edit s | MLLM call s | accepted s | **accepted ÷ (edit + call)** "
        "| rejected s | **rejected ÷ (edit + call)** | CPU ms/answer accepted | CPU ms/answer rejected |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, _fmt, edit_s, call_s, rows in results:
        unavoidable = edit_s + call_s
        for row in rows:
            if row.failed or not row.samples["accepted"] or not row.samples["rejected"]:
                print(f"| {name} | {row.label} | {edit_s:.3f} | {call_s:.3f} | failed: {row.failed} |")
                continue
            accepted = statistics.median(row.samples["accepted"])
            rejected = statistics.median(row.samples["rejected"])
            cpu_accepted = row.cpu_s["accepted"] / len(row.samples["accepted"]) * 1000
            cpu_rejected = row.cpu_s["rejected"] / len(row.samples["rejected"]) * 1000
            print(
                f"| {name} | {row.label} | {edit_s:.3f} | {call_s:.3f} | {accepted:.3f} "
                f"| **{accepted / unavoidable:.3f}** | {rejected:.3f} | **{rejected / unavoidable:.3f}** "
                f"| {cpu_accepted:.0f} | {cpu_rejected:.0f} |"
            )


if __name__ == "__main__":
    main()
