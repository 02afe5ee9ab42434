"""GPU benchmark of one Stage II (Pref-GRPO) step at FLUX.2-klein-9B size with RANDOM weights (no downloads).

The step is the trainer's own pieces: G SDE rollouts per group with log-probabilities
(``rollouts.sample_trajectories`` on the batched sampler, with the trainer's defaults: shared start noise
per group, the last step's x0-prediction decoded), scoring through a real reward service
(``etchr serve reward`` + its Redis, answered by the test MLLM at ``--mllm-latency``) in a background thread
while the next group samples, and the clipped policy-gradient update on ``--timestep-fraction`` of the
steps. Prints seconds for sampling, for waiting on rewards (what overlap did not hide), for the update, and
the peak GPU memory.

``--guidance-scales 1.0,3.5`` times the step at each rollout guidance side by side (a warm-up step each,
then ``--repeats`` timed steps taken in turn) and prints each median and the step-time ratio: at 1.0 (the
trainer's default, as the release) every DiT forward has G rows, at 3.5 (CFG) 2·G.

    python bench/gpu_rl_step.py                     # on a GPU: G = 8, 512², 25 sampling steps, rank 64
    python bench/gpu_rl_step.py --quick             # smoke run: tiny pipeline, 64², CPU, 4 steps
    python bench/gpu_rl_step.py --quick --guidance-scales 1.0,3.5 --repeats 5   # the guidance ratio
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from gpu_editor import build_klein_9b
from local_stack import service_stack
from PIL import Image

from etchr.clients.reward import RewardClient
from etchr_editor.model import resolve_device
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.tiny import build_tiny_pipeline
from etchr_train.examples import TrainingBatch, TrainingExample
from etchr_train.lora import RL_TARGETS, add_lora, lora_parameters
from etchr_train.rl import policy_loss, reward_items
from etchr_train.rollouts import sample_trajectories

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny pipeline, 64², CPU, 4 steps")
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=None, help="square side (default 512)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--groups", type=int, default=2, help="groups per step (prompts per step)")
    parser.add_argument("--sample-steps", type=int, default=None, help="default 25")
    parser.add_argument("--timestep-fraction", type=float, default=0.6)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--mllm-latency", type=float, default=0.5, help="seconds per test-MLLM request")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--guidance-scales",
        default="1.0",
        help="rollout guidance(s), comma-separated; two or more are timed side by side (default 1.0)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per guidance (median)")
    args = parser.parse_args(argv)
    args.guidance_scales = [float(value) for value in args.guidance_scales.split(",")]
    args.device = args.device or ("cpu" if args.quick else "cuda")
    args.size = args.size or (64 if args.quick else 512)
    args.sample_steps = args.sample_steps or (4 if args.quick else 25)
    return args


def respond(request: RecordedRequest) -> Reply:
    return Reply(content=["\\boxed{B}" if i % 2 else "1" for i in range(request.n)])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    pipe = (
        build_tiny_pipeline(0).to(device) if args.quick else build_klein_9b(device, torch.bfloat16, "small")
    )
    transformer = pipe.transformer
    add_lora(transformer, rank=args.rank, alpha=2 * args.rank, targets=RL_TARGETS)
    params = lora_parameters(transformer)
    for param in params:
        param.data = param.data.float()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    sampler = BatchedSampler(pipe, device=device)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    example = TrainingExample(
        id="bench", prompt="Draw the path from start to goal.", image=Path("bench.png"), target=None,
        size=(args.size, args.size), question="How many steps?\n(A) 3\n(B) 5", answer="B", task="logic",
    )  # fmt: skip
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    chosen = max(1, round(args.timestep_fraction * args.sample_steps))
    timed: dict[float, list[dict[str, float]]] = {guidance: [] for guidance in args.guidance_scales}
    with (
        ScriptedMLLM(respond, latency_s=args.mllm_latency) as mllm,
        service_stack("reward", {"ETCHR_MLLM_BASE_URL": mllm.base_url, "ETCHR_MLLM_MODEL": "test"}) as url,
        RewardClient(url) as client,
        ThreadPoolExecutor(max_workers=2) as scorer,
    ):

        def step(round_: int, guidance: float) -> dict[str, float]:
            """One RL step (sample and score every group, then update) at rollout ``guidance``."""
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sample_s, groups, futures = 0.0, [], []
            for g in range(args.groups):
                seeds = tuple(1000 * round_ + 100 * g + i for i in range(args.group_size))
                request = SampleRequest(
                    image=image,
                    prompt=example.prompt,
                    seeds=seeds,
                    steps=args.sample_steps,
                    guidance_scale=guidance,
                )
                started = time.perf_counter()
                with autocast:
                    rollouts = sample_trajectories(sampler, [request], eta=0.7)
                _sync(device)
                sample_s += time.perf_counter() - started
                batch = TrainingBatch(index=0, examples=[example], images=[image], targets=[])
                items = reward_items(batch, rollouts, args.group_size, f"{round_}.{g}.{guidance}")
                futures.append(scorer.submit(client.reward, items, k=4, advantage="pref-grpo"))
                groups.append(rollouts)
            waited = time.perf_counter()
            advantages = [torch.tensor(f.result().items[0].advantages, device=device) for f in futures]
            wait_s = time.perf_counter() - waited
            started = time.perf_counter()
            for rollouts, adv in zip(groups, advantages, strict=True):
                for k in range(chosen):
                    with autocast:
                        new = rollouts.step_log_prob(sampler, k)
                    loss, _ = policy_loss(new.log_prob, rollouts.log_probs[k], adv, 1e-4)
                    (loss.mean() / (chosen * len(groups))).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            update_s = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            return {"sample": sample_s, "wait": wait_s, "update": update_s, "peak": peak}

        for guidance in args.guidance_scales:  # warm-up: kernels, caches, each batch shape once
            step(0, guidance)
        for repeat in range(args.repeats):  # in turn, so drift hits every guidance alike
            for guidance in args.guidance_scales:
                timed[guidance].append(step(1 + repeat, guidance))

    medians: dict[float, dict[str, float]] = {}
    for guidance, rows in timed.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        median["step"] = statistics.median(row["sample"] + row["wait"] + row["update"] for row in rows)
        median["dit"] = statistics.median(row["sample"] + row["update"] for row in rows)
        medians[guidance] = median
        print(
            f"device={device} size={args.size}² G={args.group_size} groups={args.groups} "
            f"sample_steps={args.sample_steps} rank={args.rank} timesteps trained={chosen} "
            f"guidance={guidance:g}: "
            f"sampling {median['sample']:.2f} s, waiting for rewards {median['wait']:.2f} s "
            f"(MLLM {args.mllm_latency} s/request), "
            f"update {median['update']:.2f} s, step {median['step']:.2f} s, "
            f"peak memory {median['peak']:.1f} GiB"
            + (f" (median of {args.repeats})" if args.repeats > 1 else "")
        )
    if len(medians) > 1:
        base, *others = args.guidance_scales
        for other in others:
            a, b = medians[base], medians[other]
            print(
                f"guidance {base:g} ÷ {other:g}: step {a['step'] / b['step']:.3f}, sampling + update "
                f"{a['dit'] / b['dit']:.3f}, sampling {a['sample'] / b['sample']:.3f}, "
                f"update {a['update'] / b['update']:.3f}"
            )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
