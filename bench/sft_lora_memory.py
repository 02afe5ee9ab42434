"""Memory cost of the Stage I LoRA per rank: measured on the tiny checkpoint, computed at FLUX.2-klein-9B.

The adapter is the trainer's: ``add_lora`` with ``DEFAULT_TARGETS`` (every Linear layer of the DiT blocks),
alpha = rank, its weights in float32 (``cast_training_params``), AdamW (β 0.9/0.999, weight decay 1e-4).
What it costs grows linearly with the rank r: each targeted Linear (in → out) gets r·(in + out) parameters,
and training holds, per LoRA parameter, its fp32 weight, its fp32 gradient and AdamW's two fp32 moments —
16 bytes. On a GPU ``torch.optim.AdamW`` takes its foreach path, which allocates one more fp32 tensor per
parameter (the square root of the second moment) during ``step()``: 20 bytes at the peak. Under DDP
(several processes) the gradient buckets add 4 bytes more.

1. **Tiny checkpoint, measured** (``etchr tiny-editor``'s architecture, float32, CPU). Each rank runs in a
   fresh process: build the tiny pipeline, one warm-up forward, then reset the process's peak RSS (Linux
   ``/proc/self/clear_refs``), add the adapter and run ``--steps`` trainer steps (``flow_matching_loss`` on a
   synthetic ``--side``² batch, backward, gradient clipping, AdamW). It reports the trainable parameters
   (checked against r·Σ(in + out)), the bytes of the adapter's weights, gradients and AdamW state as
   allocated (summed over the tensors), the peak RSS above the pre-adapter baseline, and the marginal bytes
   per added LoRA parameter between consecutive ranks.
2. **FLUX.2-klein-9B, computed**: the transformer built on the meta device from the 9B configuration of
   ``gpu_editor.py`` (no weights, no download); the adapter added to it by ``add_lora``; parameter counts
   exact, bytes as above, next to the fixed memory of the frozen model (DiT in bf16, VAE, Qwen3-8B text
   encoder unless ``--cache-text-embeddings``). Activations are not estimated except the LoRA's own (the
   r-wide intermediate each adapted layer saves for backward): ``bench/gpu_sft_step.py`` measures whole
   steps on a GPU.

    python bench/sft_lora_memory.py                   # ranks 16,64,256,768; tiny steps at 64²
    python bench/sft_lora_memory.py --ranks 64,768 --skip-tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from etchr_train.lora import DEFAULT_TARGETS, RL_TARGETS, add_lora, lora_parameters, resolve_targets

GIB = 2**30
LORA_STATE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq (fp32)
FOREACH_EXTRA_BYTES = 4  # AdamW's foreach step on a GPU: sqrt(exp_avg_sq) as a new fp32 tensor list
DDP_BUCKET_BYTES = 4  # DDP's fp32 gradient buckets (gradient_as_bucket_view off, accelerate's default)
CHECKPOINT_BYTES = 12  # checkpoint-N: the LoRA file (fp32) + training_state.pt (AdamW's two fp32 moments)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", default="16,64,256,768", help="comma-separated LoRA ranks")
    parser.add_argument("--side", type=int, default=64, help="tiny: square side of the synthetic batch")
    parser.add_argument("--batch-size", type=int, default=1, help="tiny: rows per step")
    parser.add_argument("--steps", type=int, default=3, help="tiny: trainer steps per rank (median time)")
    parser.add_argument(
        "--resolution", type=int, default=1024, help="9B: side whose tokens size the LoRA activations (1 MP)"
    )
    parser.add_argument("--skip-tiny", action="store_true", help="only the 9B computation")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ranks = [int(rank) for rank in args.ranks.split(",")]
    return args


# ------------------------------------------------------------------------------------------- helpers


def per_rank(transformer: torch.nn.Module, targets: Sequence[str]) -> int:
    """Σ(in + out) over the targeted Linear layers: LoRA parameters per unit of rank."""
    modules = dict(transformer.named_modules())
    names = resolve_targets(transformer, targets)
    return sum(modules[name].in_features + modules[name].out_features for name in names)


def lora_token_layers(config: object, image_tokens: int, text_tokens: int) -> int:
    """Σ over adapted layers of the tokens each one sees: × r × bytes = the r-wide intermediates ``lora_A(x)``
    the adapter saves for backward, all blocks at once (no gradient checkpointing). Per double block six
    layers see the image stream (q, k, v, out, ff in/out: target + reference tokens) and six the text stream;
    per single block two layers see both."""
    both = image_tokens + text_tokens
    return config.num_layers * 6 * both + config.num_single_layers * 2 * both  # type: ignore[attr-defined]


def tensor_bytes(tensors: Sequence[torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


# ------------------------------------------------------------------------------------- tiny, measured


def measure_tiny(rank: int, side: int, batch_size: int, steps: int) -> dict[str, float]:
    """One rank in this (fresh) process; see the module docstring."""
    from gpu_sft_step import synthetic_batch

    from etchr_editor.sampler import BatchedSampler
    from etchr_editor.tiny import build_tiny_pipeline
    from etchr_train.sft import PromptEmbeddings, flow_matching_loss

    torch.manual_seed(0)
    pipe = build_tiny_pipeline(0)
    transformer = pipe.transformer
    transformer.train()
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    sampler = BatchedSampler(pipe, device=torch.device("cpu"))
    embeddings = PromptEmbeddings(sampler)
    batch = synthetic_batch(side, batch_size)

    def loss() -> torch.Tensor:
        return flow_matching_loss(sampler, batch, embeddings=embeddings, transformer=transformer, seed=0)

    with torch.no_grad():
        loss()  # warm-up: lazily built buffers and caches are not the adapter's
    gc.collect()
    baseline = _status_kib("VmRSS")
    _reset_peak_rss()

    expected = rank * per_rank(transformer, DEFAULT_TARGETS)
    add_lora(transformer, rank=rank, alpha=float(rank), targets=DEFAULT_TARGETS)
    params = lora_parameters(transformer)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)  # as TrainingRun builds it
    grads = state = 0
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        loss().backward()
        grads = tensor_bytes([p.grad for p in params])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        state = tensor_bytes([v for s in optimizer.state.values() for v in s.values() if v.dim() > 0])
    count = sum(p.numel() for p in params)
    if count != expected:
        raise AssertionError(f"rank {rank}: {count} LoRA parameters, r·Σ(in + out) = {expected}")
    image_tokens = 2 * batch.targets[0].width * batch.targets[0].height // 16**2  # target + reference
    token_layers = batch_size * lora_token_layers(transformer.config, image_tokens, 512)
    return {
        "rank": rank,
        "params": count,
        # bytes per LoRA parameter the model above predicts: the 16 of the state + the fp32 intermediates
        "predicted": LORA_STATE_BYTES + 4 * token_layers * rank / count,
        "weights": tensor_bytes(params),
        "grads": grads,
        "adamw": state,
        "peak_rss": (_status_kib("VmHWM") - baseline) * 1024,
        "seconds": statistics.median(seconds),
        "base_params": sum(p.numel() for p in transformer.parameters() if not p.requires_grad),
    }


def tiny_table(args: argparse.Namespace) -> None:
    rows = []
    for rank in args.ranks:
        done = subprocess.run(
            [
                *(sys.executable, __file__, "--child", str(rank), "--side", str(args.side)),
                *("--batch-size", str(args.batch_size), "--steps", str(args.steps)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"rank {rank} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["base_params"]
    print(
        f"\nTiny checkpoint, measured (CPU, float32, {args.side}² batch of {args.batch_size}, "
        f"{args.steps} steps per rank; the DiT has {base / 1e6:.3f} M frozen parameters)"
    )
    print(
        "| rank | LoRA params | ÷ DiT | weights MiB | grads MiB | AdamW MiB | state B/param | "
        "peak RSS over baseline MiB | ÷ rank 64 | marginal B per added param | predicted B/param | s/step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    reference = next((row for row in rows if row["rank"] == 64), rows[0])
    previous = None
    for row in rows:
        state = row["weights"] + row["grads"] + row["adamw"]
        marginal = "—"
        if previous is not None:
            added = row["params"] - previous["params"]
            marginal = f"{(row['peak_rss'] - previous['peak_rss']) / added:.1f}"
        print(
            f"| {row['rank']} | {row['params']:,} | {row['params'] / base:.2f} | "
            f"{row['weights'] / 2**20:.2f} | {row['grads'] / 2**20:.2f} | {row['adamw'] / 2**20:.2f} | "
            f"{state / row['params']:.1f} | "
            f"{row['peak_rss'] / 2**20:.1f} | {row['peak_rss'] / reference['peak_rss']:.2f} | {marginal} | "
            f"{row['predicted']:.1f} | {row['seconds']:.3f} |"
        )
        previous = row
    if len(rows) > 1:  # least squares over all ranks: the per-parameter cost, the page-level noise averaged
        xs, ys = [row["params"] for row in rows], [row["peak_rss"] for row in rows]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        print(
            f"fitted peak RSS per LoRA parameter (least squares over the ranks): {slope:.1f} B; predicted "
            f"{rows[-1]['predicted']:.1f} B = {LORA_STATE_BYTES} (weights, gradients, AdamW) + the fp32 "
            "lora_A(x) intermediates saved for backward"
        )


# ------------------------------------------------------------------------------------- 9B, computed


def klein_9b_table(args: argparse.Namespace) -> None:
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from gpu_editor import KLEIN_9B_TRANSFORMER, QWEN3_8B
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**KLEIN_9B_TRANSFORMER)
        vae = AutoencoderKLFlux2()
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3_8B))
    dit = sum(p.numel() for p in transformer.parameters())
    vae_params = sum(p.numel() for p in vae.parameters())
    text_params = sum(p.numel() for p in text_encoder.parameters())
    all_linear, before = per_rank(transformer, DEFAULT_TARGETS), per_rank(transformer, RL_TARGETS)
    layers = len(resolve_targets(transformer, DEFAULT_TARGETS))

    # the LoRA's own activations in bf16 (autocast), target + reference image tokens and 512 text tokens
    token_layers = lora_token_layers(transformer.config, 2 * (args.resolution // 16) ** 2, 512)

    frozen = 2 * (dit + vae_params)  # bf16
    print(
        f"\nFLUX.2-klein-9B, computed (meta device; {dit / 1e9:.3f} B DiT parameters = "
        f"{2 * dit / GIB:.2f} GiB in bf16; VAE {vae_params / 1e6:.1f} M = {2 * vae_params / GIB:.2f} GiB; "
        "Qwen3-8B text encoder "
        f"{text_params / 1e9:.3f} B = {2 * text_params / GIB:.2f} GiB unless --cache-text-embeddings)"
    )
    print(
        f"LoRA targets: {layers} Linear layers, {all_linear:,} parameters per unit of rank "
        f"(before this default: {len(resolve_targets(transformer, RL_TARGETS))} layers, {before:,}: "
        f"× {all_linear / before:.3f})"
    )
    print(
        "| rank | LoRA params | ÷ DiT | weights fp32 GiB | grads GiB | AdamW GiB | state, 16 B/param GiB | "
        "peak with foreach AdamW, 20 B GiB | + DDP buckets, 24 B GiB | "
        f"frozen DiT + VAE + peak state GiB | + text encoder GiB | checkpoint on disk GiB | "
        f"LoRA activations, no checkpointing, {args.resolution}² GiB | ÷ rank 64 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rank in args.ranks:
        params = rank * all_linear
        peak = (LORA_STATE_BYTES + FOREACH_EXTRA_BYTES) * params
        print(
            f"| {rank} | {params / 1e6:,.1f} M | {params / dit:.3f} | {4 * params / GIB:.2f} | "
            f"{4 * params / GIB:.2f} | {8 * params / GIB:.2f} | {LORA_STATE_BYTES * params / GIB:.2f} | "
            f"{peak / GIB:.2f} | {(peak + DDP_BUCKET_BYTES * params) / GIB:.2f} | "
            f"{(frozen + peak) / GIB:.1f} | {(frozen + peak + 2 * text_params) / GIB:.1f} | "
            f"{CHECKPOINT_BYTES * params / GIB:.2f} | {2 * rank * token_layers / GIB:.2f} | "
            f"{rank / 64:.2f} |"
        )
    # the adapter as the trainer adds it, on the meta device: the count above is peft's own
    add_lora(transformer, rank=args.ranks[-1], alpha=float(args.ranks[-1]), targets=DEFAULT_TARGETS)
    added = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    if added != args.ranks[-1] * all_linear:
        raise AssertionError(f"peft added {added} parameters, r·Σ(in + out) = {args.ranks[-1] * all_linear}")
    print(f"(checked: add_lora on the meta-device 9B DiT adds {added:,} parameters at rank {args.ranks[-1]})")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        torch.set_num_threads(1)
        print(json.dumps(measure_tiny(args.child, args.side, args.batch_size, args.steps)))
        return
    print(f"torch {torch.__version__}, ranks {args.ranks}, targets: every Linear of the DiT blocks")
    if not args.skip_tiny:
        tiny_table(args)
    klein_9b_table(args)


if __name__ == "__main__":
    main()
