"""Stage I (Reasoning Imitation): LoRA SFT of the FLUX.2-klein DiT on (image, question) → edited image.

The objective is rectified flow matching on the target's latents: ``x_σ = (1 − σ)·x₀ + σ·ε`` with σ drawn
logit-normally, and the DiT asked for the velocity ``ε − x₀``. Everything the DiT sees is built by the
editor's own ``BatchedSampler`` — the reference image encoded, bn-normalised and packed, its tokens
concatenated after the noisy ones with the same position ids, the prompt from the task registry — and the
velocity comes from ``BatchedSampler.velocity``, the very call serving denoises with; by default each image
is fitted into the editor's own pixel budget (``ETCHR_EDITOR_MAX_MODEL_PIXELS``) by the editor's
``fit_model_size``. So a LoRA trained here is served exactly as it was trained. The adapter covers every
Linear layer of the DiT blocks (``lora.DEFAULT_TARGETS``).

Runs on one device as it is, or on several under ``accelerate launch`` (data-parallel; each process takes
every N-th micro-batch of one global, seeded stream).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from pydantic import Field

from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_train.examples import TrainingBatch
from etchr_train.lora import DEFAULT_TARGETS
from etchr_train.training_run import MixedPrecision, RunOptions, TrainingRun, resolve_mixed_precision

__all__ = [
    "MixedPrecision",
    "PromptEmbeddings",
    "SFTConfig",
    "SFTResult",
    "flow_matching_loss",
    "resolve_mixed_precision",
    "train_sft",
]

logger = logging.getLogger("etchr.train.sft")

# What must match for a checkpoint to be resumed: the adapter's shape and what it was trained on top of.
_STRUCTURAL = ("model", "rank", "lora_alpha", "targets")


class SFTConfig(RunOptions):
    """One SFT run; the CLI's options, one to one (``etchr train sft --help``)."""

    steps: int = Field(default=1000, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    save_every: int = Field(default=500, ge=0, description="0 = only at the end")
    resolution: int | None = Field(
        default=None,
        ge=64,
        description="pixel budget resolution²; None = the editor's own, ETCHR_EDITOR_MAX_MODEL_PIXELS (1 MP)",
    )
    targets: tuple[str, ...] = DEFAULT_TARGETS  # every Linear layer of the DiT blocks
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha; None = rank (scale 1)")
    batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    cache_text_embeddings: bool = False
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    logit_mean: float = 0.0
    logit_std: float = Field(default=1.0, gt=0)

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)


@dataclass(frozen=True)
class SFTResult:
    out: Path
    lora: Path  # OUT/pytorch_lora_weights.safetensors: what ETCHR_EDITOR_LORA takes
    start_step: int  # 0, or the checkpoint's step when resumed
    steps: int
    final_loss: float


def noise_seed(seed: int, micro_batch: int) -> int:
    """The RNG seed of one micro-batch's timesteps and noise: the same on any rank, before or after resume."""
    return int(np.random.SeedSequence([seed, micro_batch]).generate_state(1, dtype=np.uint64)[0])


class PromptEmbeddings:
    """Prompt embeddings for a batch: encoded each time, or once up front and kept on the CPU.

    Caching lets the text encoder (Qwen3-8B at full size, ~16 GB) leave the GPU for the whole run; it costs
    host memory, 512 × 3·hidden values per distinct prompt.
    """

    def __init__(self, sampler: BatchedSampler) -> None:
        self.sampler = sampler
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def precompute(self, prompts: Sequence[str], *, chunk: int = 16) -> None:
        unique = list(dict.fromkeys(prompts))
        cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            embeds, ids = self.sampler.encode_prompts(part)
            for i, prompt in enumerate(part):
                cache[prompt] = (embeds[i].cpu(), ids[i].cpu())
        self._cache = cache

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.sampler.device
        if self._cache is not None:
            rows = [self._cache[prompt] for prompt in prompts]
            return (
                torch.stack([embeds for embeds, _ in rows]).to(device),
                torch.stack([ids for _, ids in rows]).to(device),
            )
        unique = list(dict.fromkeys(prompts))
        embeds, ids = self.sampler.encode_prompts(unique)
        index = torch.tensor([unique.index(prompt) for prompt in prompts], device=embeds.device)
        return embeds[index], ids[index]


def flow_matching_loss(
    sampler: BatchedSampler,
    batch: TrainingBatch,
    *,
    embeddings: Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]],
    transformer: torch.nn.Module,
    seed: int,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Mean squared error between the DiT's velocity and ``ε − x₀`` at a logit-normal σ per row."""
    prompt_embeds, text_ids = embeddings(batch.prompts)
    image_latents, image_ids = sampler.encode_reference_images(batch.images)
    target, _ = sampler.encode_reference_images(batch.targets)  # x₀ in the space the sampler decodes from
    requests = [
        SampleRequest(image=image, prompt=prompt, seeds=(0,), steps=1, guidance_scale=1.0)
        for image, prompt in zip(batch.images, batch.prompts, strict=True)
    ]
    cond = sampler.conditioning(
        requests,
        prompt_embeds=prompt_embeds,
        text_ids=text_ids,
        image_latents=image_latents,
        image_ids=image_ids,
    )
    generator = torch.Generator("cpu").manual_seed(noise_seed(seed, batch.index))
    sigma = compute_density_for_timestep_sampling(
        "logit_normal", len(requests), logit_mean=logit_mean, logit_std=logit_std, generator=generator
    )
    noise = torch.randn(target.shape, generator=generator, dtype=torch.float32).to(
        target.device, target.dtype
    )
    s = sigma.to(target.device, target.dtype).view(-1, 1, 1)
    noisy = (1 - s) * target + s * noise
    prediction = sampler.velocity(cond, noisy, sigma.to(target.device) * 1000, transformer=transformer)
    return F.mse_loss(prediction.float(), (noise - target).float())


def train_sft(config: SFTConfig) -> SFTResult:
    """Train, checkpoint every ``save_every`` steps and at the end, write ``OUT/pytorch_lora_weights``."""
    run = TrainingRun.open(
        config,
        name="sft",
        run_config={**config.model_dump(mode="json"), "lora_alpha": config.lora_alpha},
        alpha=config.lora_alpha,
        weight_decay=config.weight_decay,
        schedule=lambda optimizer: get_scheduler(
            config.lr_schedule,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.steps,
        ),
        structural=_STRUCTURAL,
        order=("seed", "batch_size", "grad_accum", "resolution", "data"),
    )
    embeddings = PromptEmbeddings(run.sampler)
    if config.cache_text_embeddings:
        embeddings.precompute([example.prompt for example in run.examples])
        run.pipe.text_encoder.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    batches = run.batches(config.batch_size, per_step=config.grad_accum)
    logger.info(
        "SFT: %d examples, steps %d→%d, %d process(es) × batch %d × accumulation %d, mixed precision %s",
        len(run.examples), run.start, config.steps, run.world, config.batch_size, config.grad_accum,
        run.accelerator.mixed_precision,
    )  # fmt: skip

    accelerator = run.accelerator
    loss_value = math.nan
    run.model.train()
    for step in run.steps():
        total = torch.zeros((), device=accelerator.device)
        for micro in range(config.grad_accum):
            batch = next(batches)
            last = micro == config.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(run.model):
                loss = flow_matching_loss(
                    run.sampler,
                    batch,
                    embeddings=embeddings,
                    transformer=run.model,
                    seed=config.seed,
                    logit_mean=config.logit_mean,
                    logit_std=config.logit_std,
                )
                accelerator.backward(loss / config.grad_accum)
            total += loss.detach()
        lr = run.update()
        loss_value = accelerator.reduce(total / config.grad_accum, reduction="mean").item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower --lr or check the data")
        run.end_step(
            step, {"step": step, "loss": loss_value, "lr": lr}, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}"
        )
    lora = run.finish()
    return SFTResult(
        out=config.out, lora=lora, start_step=run.start, steps=config.steps, final_loss=loss_value
    )
