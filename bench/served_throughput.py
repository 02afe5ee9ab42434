"""Served throughput under concurrent load ÷ the BatchedSampler's direct throughput, per max batch.

For each ``ETCHR_EDITOR_MAX_BATCH`` value, starts ``etchr serve editor`` (its own Redis, in-process worker),
sends ``--requests`` distinct edits from ``--concurrency`` concurrent clients over HTTP, and compares images/s
with the sampler called directly at the same batch size — one run, same machine.

    python bench/served_throughput.py                      # tiny checkpoint on CPU
    python bench/served_throughput.py --model DIR --device cuda --size 512 --steps 40 --batches 1,4

``--progress-compare`` instead serves the same load with the workers' progress publishing on and off
(``ETCHR_EDITOR_PROGRESS``), alternating stacks for ``--rounds`` rounds, and reports served seconds per edit
and p50 latency for each with the on÷off ratio (the cost of publishing denoising steps to Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from local_stack import edit_arg_parser, editor_stack
from PIL import Image

from etchr.tasks import TaskRegistry
from etchr_editor.model import load_editor
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.tiny import save_tiny_editor


def input_image(side: int, index: int) -> Image.Image:
    return Image.new("RGB", (side, side), ((37 * index) % 256, (91 * index) % 256, 120))


def direct_images_per_s(model: str, args: argparse.Namespace, batch: int) -> float:
    sampler = BatchedSampler(load_editor(model, device=args.device).pipe, max_rows=batch)
    prompt = TaskRegistry.default().editor_prompt("perception", "Where is the mug?")
    requests = [
        SampleRequest(input_image(args.size, i), f"{prompt} #{i}", (i,), args.steps, args.guidance)
        for i in range(batch)
    ]
    sampler.sample(requests)  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        sampler.sample(requests)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


async def served_images_per_s(url: str, args: argparse.Namespace) -> tuple[float, float]:
    bodies = []
    for i in range(args.requests):
        buffer = io.BytesIO()
        input_image(args.size, i).save(buffer, format="PNG")
        bodies.append(
            {
                "image": base64.b64encode(buffer.getvalue()).decode(),
                "question": f"Where is the mug? #{i}",
                "task": "perception",
                "seed": i,
                "steps": args.steps,
                "guidance_scale": args.guidance,
            }
        )
    latencies: list[float] = []
    limit = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await http.post("/edit", json=bodies[0])  # warm-up

        async def one(body: dict[str, object]) -> None:
            async with limit:
                started = time.perf_counter()
                (await http.post("/edit", json=body)).raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        elapsed = time.perf_counter() - started
    return args.requests / elapsed, statistics.median(latencies)


def progress_compare(model: str, args: argparse.Namespace) -> None:
    """Served s/edit and p50 with ETCHR_EDITOR_PROGRESS off and on (order alternating), median of rounds."""
    batch = int(args.batches.split(",")[0])
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for progress in (False, True) if round_ % 2 == 0 else (True, False):  # no arm always goes first
            settings = {
                "ETCHR_EDITOR_MAX_BATCH": str(batch),
                "ETCHR_EDITOR_BATCH_WAIT_MS": "0",
                "ETCHR_EDITOR_PROGRESS": str(progress).lower(),
            }
            with editor_stack(model, args.device, settings) as url:
                runs[progress].append(asyncio.run(served_images_per_s(url, args)))
    print(
        f"device={args.device} size={args.size}² steps={args.steps} max batch={batch} "
        f"concurrency={args.concurrency} requests={args.requests} rounds={args.rounds}"
    )
    print(f"{'progress':>9}{'served s/edit':>15}{'p50 s':>8}")
    per_edit: dict[bool, float] = {}
    p50: dict[bool, float] = {}
    for progress in (False, True):
        per_edit[progress] = statistics.median(1 / rate for rate, _ in runs[progress])
        p50[progress] = statistics.median(latency for _, latency in runs[progress])
        print(f"{'on' if progress else 'off':>9}{per_edit[progress]:>15.4f}{p50[progress]:>8.3f}")
    print(f"on÷off: served s/edit {per_edit[True] / per_edit[False]:.3f}, p50 {p50[True] / p50[False]:.3f}")


def main() -> None:
    parser = edit_arg_parser(__doc__)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--progress-compare", action="store_true", help="progress publishing on vs off")
    parser.add_argument("--rounds", type=int, default=3, help="with --progress-compare: off/on pairs")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="etchr-bench-"))
    model = args.model or str(save_tiny_editor(work / "tiny"))
    if args.progress_compare:
        progress_compare(model, args)
        shutil.rmtree(work, ignore_errors=True)
        return
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        settings = {"ETCHR_EDITOR_MAX_BATCH": str(batch), "ETCHR_EDITOR_BATCH_WAIT_MS": "0"}
        with editor_stack(model, args.device, settings) as url:
            served, p50 = asyncio.run(served_images_per_s(url, args))
        direct = direct_images_per_s(model, args, batch)
        rows.append((batch, served, direct, p50))
    shutil.rmtree(work, ignore_errors=True)

    print(
        f"device={args.device} size={args.size}² steps={args.steps} concurrency={args.concurrency} "
        f"requests={args.requests}"
    )
    print(f"{'max batch':>9}{'served img/s':>14}{'direct img/s':>14}{'served÷direct':>15}{'p50 s':>8}")
    for batch, served, direct, p50 in rows:
        print(f"{batch:>9}{served:>14.2f}{direct:>14.2f}{served / direct:>15.3f}{p50:>8.3f}")


if __name__ == "__main__":
    main()
