"""GPU benchmark of one Stage I SFT step at FLUX.2-klein-9B size with RANDOM weights (no downloads).

The step is the trainer's own: ``flow_matching_loss`` (VAE encode of reference and target, prompt encoding,
the DiT forward through ``BatchedSampler.velocity``), backward through the LoRA, AdamW. The pipeline is the
9B-shaped one of ``gpu_editor.py`` (bf16, real VAE configuration, small text encoder with the real output
width unless ``--text-encoder qwen3-8b``). For each side and rank it prints seconds per step (median) and
the peak GPU memory, with gradient checkpointing on (``--no-gradient-checkpointing`` to compare).

    python bench/gpu_sft_step.py                     # on a GPU: 512² and 1024², rank 64 and 768
    python bench/gpu_sft_step.py --quick             # smoke run: tiny pipeline, 64², CPU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from gpu_editor import build_klein_9b, median_seconds
from PIL import Image

from etchr_editor.model import resolve_device
from etchr_editor.sampler import BatchedSampler
from etchr_editor.tiny import build_tiny_pipeline
from etchr_train.examples import TrainingBatch, TrainingExample
from etchr_train.lora import ADAPTER, DEFAULT_TARGETS, add_lora, lora_parameters
from etchr_train.sft import PromptEmbeddings, flow_matching_loss


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny pipeline, 64², CPU")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    parser.add_argument("--sizes", default=None, help="comma-separated square sides (default 512,1024)")
    parser.add_argument("--ranks", default=None, help="comma-separated LoRA ranks (default 64,768)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (median)")
    parser.add_argument("--text-encoder", choices=("small", "qwen3-8b"), default="small")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.quick else "cuda")
    args.sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "512,1024")).split(",")]
    args.ranks = [int(r) for r in (args.ranks or ("4,8" if args.quick else "64,768")).split(",")]
    return args


def synthetic_batch(side: int, rows: int) -> TrainingBatch:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(2 * rows)]
    prompt = "Draw the path from the green start to the red goal. Question: how many steps is the path?"
    examples = [
        TrainingExample(
            id=str(i),
            prompt=prompt,
            image=Path("synthetic.png"),
            target=None,
            size=(side, side),
            question=prompt,
            answer="8",
            task="logic",
        )
        for i in range(rows)
    ]
    return TrainingBatch(index=0, examples=examples, images=images[:rows], targets=images[rows:])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    if args.quick:
        pipe = build_tiny_pipeline(0).to(device)
    else:
        pipe = build_klein_9b(device, torch.bfloat16, args.text_encoder)
    transformer = pipe.transformer
    transformer.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    sampler = BatchedSampler(pipe, device=device)
    embeddings = PromptEmbeddings(sampler)
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
        f"transformer={sum(p.numel() for p in transformer.parameters()) / 1e9:.2f} B params, "
        f"dtype={str(transformer.dtype).removeprefix('torch.')}, text encoder={args.text_encoder}, "
        f"gradient checkpointing={args.gradient_checkpointing}, batch={args.batch_size}, "
        f"built in {time.perf_counter() - started:.1f} s"
    )
    for rank in args.ranks:
        add_lora(transformer, rank=rank, alpha=rank, targets=DEFAULT_TARGETS)
        params = lora_parameters(transformer)
        for param in params:
            param.data = param.data.float()  # LoRA weights train in fp32, as the trainer casts them
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        lora_params = sum(p.numel() for p in params)
        for side in args.sizes:
            batch = synthetic_batch(side, args.batch_size)

            def step(batch: TrainingBatch = batch, optimizer: torch.optim.Optimizer = optimizer) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = flow_matching_loss(
                        sampler, batch, embeddings=embeddings, transformer=transformer, seed=0
                    )
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds = median_seconds(step, device, args.repeats)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            print(
                f"rank {rank} ({lora_params / 1e6:.1f} M LoRA params) {side}² "
                f"({(side // 16) ** 2} target + {(side // 16) ** 2} reference tokens + 512 text): "
                f"{seconds:.3f} s/step, peak memory {peak:.1f} GiB"
            )
        del optimizer, params
        transformer.delete_adapters(ADAPTER)


if __name__ == "__main__":
    main()
