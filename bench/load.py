"""Bounded load on loopback: /edit, /answer and /reward, one endpoint at a time, N requests at concurrency C.

Starts the whole stack itself, as ops would run it: ``etchr serve editor`` on the tiny checkpoint,
``etchr serve verifier`` (evr mode, its editor the one above) and ``etchr serve reward``, each with its own
throwaway redis-server, bearer auth on, and the test MLLM from tests/support in a process of its own,
answering every request after a fixed latency. Every request carries a distinct image, so nothing is
answered from a cache.

Per endpoint it prints throughput (req/s over the phase's wall time), p50/p95/p99 latency of successful
requests, errors by status (or exception type), and "lost": requests that got neither a response nor an
error. For /edit it also checks that nothing was lost or done twice behind the API: every job id is
distinct, ``GET /jobs/{id}`` says done for each, the editor's ``etchr_editor_jobs_total{outcome="done"}``
rose by exactly the number of successful edits and its queue is empty afterwards.

    python bench/load.py                                   # defaults below, ~1 min on 2 CPU cores
    python bench/load.py --edit 48:8 --answer 96:16 --reward 96:16 --mllm-latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from local_stack import editor_stack, service_stack
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the test MLLM server in tests/support
from etchr.tasks import JUDGE_REPLY_CONVENTION  # noqa: E402
from etchr_editor.tiny import save_tiny_editor  # noqa: E402

API_KEY = "bench-load-key"
AUTH = {"authorization": f"Bearer {API_KEY}"}
QUESTION = "Which exit does the path from the green start reach? (A) left (B) right"
JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it


def png(i: int, size: int) -> str:
    """A distinct image per request (no cache hit, no coalescing): the colour encodes ``i``."""
    buffer = io.BytesIO()
    colour = (i % 256, (i // 256) % 256, 90)
    image = Image.new("RGB", (size, size), colour)
    image.putpixel((i % size, (i // size) % size), (255, 255, 255))
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------------ the test MLLM process


def serve_mllm(latency_s: float) -> None:
    """Runs in its own process (``--serve-mllm``) so the load generator does not share its GIL."""
    from tests.support.mllm_server import RecordedRequest, ScriptedMLLM

    def respond(request: RecordedRequest) -> str:
        return "1" if JUDGE_MARK in request.text else "Following the path, the exit is B.\n\\boxed{B}"

    with ScriptedMLLM(respond, latency_s=latency_s) as mllm:
        print(mllm.base_url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or exits)


def start_mllm(stack: ExitStack, latency_s: float) -> str:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-mllm", str(latency_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(proc.wait, 30)
    stack.callback(proc.stdin.close)  # type: ignore[union-attr]
    url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not url.startswith("http"):
        raise RuntimeError("the test MLLM did not start")
    return url


# ------------------------------------------------------------------------------------------------ load


@dataclass
class PhaseResult:
    endpoint: str
    requests: int
    concurrency: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    bodies: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    def percentile_ms(self, q: int) -> float:
        if len(self.latencies_s) < 2:
            return float("nan") if not self.latencies_s else self.latencies_s[0] * 1000
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[q - 1] * 1000


async def run_phase(
    client: httpx.AsyncClient,
    endpoint: str,
    url: str,
    make_body: Callable[[int], dict[str, object]],
    requests: int,
    concurrency: int,
) -> PhaseResult:
    """``requests`` POSTs with at most ``concurrency`` in flight; each request's outcome is recorded once."""
    limit = asyncio.Semaphore(concurrency)
    outcomes: dict[int, tuple[str, float, dict | None]] = {}
    bodies = [make_body(i) for i in range(requests)]  # built before the clock starts

    async def one(i: int) -> None:
        async with limit:
            started = time.perf_counter()
            try:
                response = await client.post(url, json=bodies[i], headers=AUTH)
            except httpx.HTTPError as exc:
                outcomes[i] = (type(exc).__name__, time.perf_counter() - started, None)
                return
            elapsed = time.perf_counter() - started
            body = response.json() if response.status_code == 200 else None
            outcomes[i] = (str(response.status_code), elapsed, body)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)), return_exceptions=True)
    result = PhaseResult(endpoint, requests, concurrency, time.perf_counter() - started)
    for i in range(requests):
        if i not in outcomes:
            result.lost += 1
            continue
        status, elapsed, body = outcomes[i]
        if status == "200" and body is not None:
            result.latencies_s.append(elapsed)
            result.bodies.append(body)
        else:
            result.errors[status] += 1
    return result


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    """One sample's value from a service's /metrics (0 when absent)."""
    text = (await client.get(f"{url}/metrics")).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


async def check_edits(
    client: httpx.AsyncClient, editor: str, result: PhaseResult, done_before: float
) -> None:
    """Behind the API: one job per successful edit, each done exactly once, nothing left in the queue."""
    ids = [body["id"] for body in result.bodies]
    if len(set(ids)) != len(ids):
        result.notes.append(f"DUPLICATE job ids: {len(ids) - len(set(ids))}")
    statuses = Counter()
    for job_id in ids:
        response = await client.get(f"{editor}/jobs/{job_id}", headers=AUTH)
        statuses[response.json().get("status", str(response.status_code))] += 1
    if statuses != Counter({"done": len(ids)}):
        result.notes.append(f"job states {dict(statuses)}")
    done = await metric(client, editor, 'etchr_editor_jobs_total{outcome="done"}') - done_before
    if done != len(ids):
        result.notes.append(f"worker finished {done:g} jobs for {len(ids)} edits")
    waiting = await metric(client, editor, "etchr_editor_queue_waiting")
    running = await metric(client, editor, "etchr_editor_queue_running")
    if waiting or running:
        result.notes.append(f"queue not empty: {waiting:g} waiting, {running:g} running")
    if not result.notes:
        result.notes.append(f"{len(ids)} job ids distinct, each done once; queue empty")
    if len(result.bodies) >= 2:  # the editor's own view, to tell queueing from HTTP/client time
        for key in ("queue_ms", "infer_ms", "total_ms"):
            values = [body["timings"][key] for body in result.bodies]
            cuts = statistics.quantiles(values, n=100, method="inclusive")
            result.notes.append(f"server {key}: p50 {cuts[49]:.0f}, p95 {cuts[94]:.0f}")


def parse_load(text: str) -> tuple[int, int]:
    requests, _, concurrency = text.partition(":")
    return int(requests), int(concurrency or 1)


async def main_async(args: argparse.Namespace, urls: dict[str, str]) -> list[PhaseResult]:
    editor, verifier, reward = urls["editor"], urls["verifier"], urls["reward"]
    size, group = args.size, args.group
    edit_body: Callable[[int], dict[str, object]] = lambda i: {  # noqa: E731
        "image": png(i, size),
        "question": QUESTION,
        "task": "logic",
        "seed": i,
    }
    answer_body: Callable[[int], dict[str, object]] = lambda i: {  # noqa: E731
        "image": png(10_000 + i, size),
        "question": QUESTION,
        "task": "logic",
        "mode": "evr",
    }

    def reward_body(i: int) -> dict[str, object]:
        edits = [png(20_000 + i * group + g, size) for g in range(group)]
        item = {"id": f"q{i}", "image": png(90_000 + i, size), "question": QUESTION, "answer": "B"}
        return {"items": [{**item, "task": "logic", "edits": edits}], "k": args.k}

    phases: list[tuple[str, str, Callable[[int], dict[str, object]], tuple[int, int]]] = [
        ("/edit", f"{editor}/edit", edit_body, parse_load(args.edit)),
        ("/answer (evr)", f"{verifier}/answer", answer_body, parse_load(args.answer)),
        (f"/reward (G={group}, k={args.k})", f"{reward}/reward", reward_body, parse_load(args.reward)),
    ]
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    results = []
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        for name, url, make_body, (requests, concurrency) in phases:
            # Warm-up, not counted: one burst at the phase's concurrency, so every batch shape has run once.
            warm = [make_body(50_000 + j) for j in range(concurrency)]
            for response in await asyncio.gather(*(client.post(url, json=b, headers=AUTH) for b in warm)):
                response.raise_for_status()
            done_before = await metric(client, editor, 'etchr_editor_jobs_total{outcome="done"}')
            result = await run_phase(client, name, url, make_body, requests, concurrency)
            if name == "/edit":
                await check_edits(client, editor, result, done_before)
            elif name.startswith("/reward"):
                bad = sum(len(body["items"][0]["rewards"]) != group for body in result.bodies)
                result.notes.append(f"{bad} responses with a wrong number of rewards")
            else:
                bad = sum(not body.get("answer") for body in result.bodies)
                used = sum(bool(body.get("used_edit")) for body in result.bodies)
                result.notes.append(f"{used}/{result.ok} answered from the edit; {bad} without an answer")
            results.append(result)
    return results


def print_table(results: list[PhaseResult]) -> None:
    header = (
        f"| {'endpoint':<22} | {'N':>4} | {'C':>3} | {'ok':>4} | errors | lost | {'req/s':>6} "
        f"| {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for r in results:
        errors = ", ".join(f"{k}×{v}" for k, v in sorted(r.errors.items())) or "0"
        print(
            f"| {r.endpoint:<22} | {r.requests:>4} | {r.concurrency:>3} | {r.ok:>4} | {errors:>6} | "
            f"{r.lost:>4} | {r.requests / r.wall_s:>6.1f} | {r.percentile_ms(50):>7.0f} | "
            f"{r.percentile_ms(95):>7.0f} | {r.percentile_ms(99):>7.0f} |"
        )
    for r in results:
        for note in r.notes:
            print(f"  {r.endpoint}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edit", default="48:8", help="N:C for /edit")
    parser.add_argument("--answer", default="96:16", help="N:C for /answer (evr)")
    parser.add_argument("--reward", default="96:16", help="N:C for /reward")
    parser.add_argument("--mllm-latency", type=float, default=0.05, help="seconds per test-MLLM reply")
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--steps", type=int, default=4, help="editor denoising steps")
    parser.add_argument("--group", type=int, default=4, help="edits per /reward item (G)")
    parser.add_argument("--k", type=int, default=1, help="decodings per /reward query")
    parser.add_argument("--timeout", type=float, default=300, help="client timeout per request (s)")
    parser.add_argument("--serve-mllm", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_mllm is not None:
        serve_mllm(args.serve_mllm)
        return

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model = str(save_tiny_editor(work / "tiny"))
        mllm_url = start_mllm(stack, args.mllm_latency)
        common = {"ETCHR_API_KEYS": API_KEY}
        editor = stack.enter_context(
            editor_stack(model, "cpu", {**common, "ETCHR_EDITOR_STEPS": str(args.steps)})
        )
        mllm = {"ETCHR_MLLM_BASE_URL": mllm_url, "ETCHR_MLLM_MODEL": "bench-vlm"}
        verifier = stack.enter_context(
            service_stack(
                "verifier", {**common, **mllm, "ETCHR_EDITOR_URL": editor, "ETCHR_EDITOR_API_KEY": API_KEY}
            )
        )
        reward = stack.enter_context(
            service_stack("reward", {**common, **mllm, "ETCHR_REWARD_OPEN_JUDGE": "false"})
        )
        results = asyncio.run(main_async(args, {"editor": editor, "verifier": verifier, "reward": reward}))

    print(
        f"loopback, {os.cpu_count()} CPUs; tiny editor {args.size}², {args.steps} steps, CFG; "
        f"test MLLM latency {args.mllm_latency * 1000:g} ms; auth on; distinct images (no cache hits)"
    )
    print_table(results)


if __name__ == "__main__":
    main()
