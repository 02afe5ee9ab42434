"""Images per second of the BatchedSampler at several batch sizes of DISTINCT requests.

Each batch holds b different requests (own image, prompt, guidance scale, seed), which is what the editor
worker collects from its queue; throughput(b) / throughput(1) says how much dynamic batching buys and so
where ``ETCHR_EDITOR_MAX_BATCH`` should sit. A few warm-up runs per batch size, then the median of timed runs.

    python bench/batch_throughput.py                          # tiny checkpoint on CPU (built in a temp dir)
    python bench/batch_throughput.py --model DIR --device cuda --size 512 --steps 40 --batches 1,2,4,8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from etchr_editor.model import load_editor
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.tiny import save_tiny_editor


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="Flux2KleinPipeline dir or hub id (default: tiny checkpoint in a temp dir)"
    )
    parser.add_argument("--lora", action="append", default=[], help="LoRA to fuse (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    parser.add_argument("--compile", action="store_true", help="compile the transformer's repeated blocks")
    parser.add_argument("--size", type=int, default=64, help="square image side in pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.5, help="base guidance; rows vary around it")
    parser.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (median reported)")
    return parser.parse_args(argv)


def make_requests(count: int, size: int, steps: int, guidance: float) -> list[SampleRequest]:
    """``count`` distinct requests sharing one batch key: own image, prompt, guidance (all > 1) and seed."""
    rng = np.random.default_rng(0)
    return [
        SampleRequest(
            image=Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
            prompt=f"Question {i}: where is object number {i}? Draw a red box around it.",
            seeds=(i,),
            steps=steps,
            guidance_scale=max(1.5, guidance + 0.25 * (i % 3 - 1)),
        )
        for i in range(count)
    ]


def timed(sampler: BatchedSampler, requests: list[SampleRequest], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    sampler.sample(requests)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def run(args: argparse.Namespace, model: str) -> None:
    batches = [int(b) for b in args.batches.split(",")]
    editor = load_editor(model, loras=args.lora, device=args.device, dtype=args.dtype, compile=args.compile)
    sampler = BatchedSampler(editor.pipe, max_rows=max(batches))
    print(
        f"model={editor.info['name']} device={editor.info['device']} dtype={editor.info['dtype']} "
        f"compiled={editor.info['compiled']} size={args.size} steps={args.steps} "
        f"warmup={args.warmup} repeats={args.repeats} torch_threads={torch.get_num_threads()}"
    )
    rows: list[tuple[int, float, float]] = []
    for batch in batches:
        requests = make_requests(batch, args.size, args.steps, args.guidance)
        for _ in range(args.warmup):
            timed(sampler, requests, editor.device)
        seconds = statistics.median(timed(sampler, requests, editor.device) for _ in range(args.repeats))
        rows.append((batch, seconds, batch / seconds))
    base = rows[0][2]
    print(f"{'batch':>5} {'median s':>10} {'images/s':>10} {'ms/image':>10} {'vs b=' + str(rows[0][0]):>8}")
    for batch, seconds, throughput in rows:
        ratio = throughput / base
        print(f"{batch:>5} {seconds:>10.4f} {throughput:>10.2f} {1000 / throughput:>10.1f} {ratio:>8.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.model:
        run(args, args.model)
        return
    with tempfile.TemporaryDirectory(prefix="etchr-tiny-editor-") as tmp:
        run(args, str(save_tiny_editor(tmp)))


if __name__ == "__main__":
    main()
