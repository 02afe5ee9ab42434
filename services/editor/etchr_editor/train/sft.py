"""Stage I (Reasoning Imitation): LoRA SFT of the FLUX.2-klein DiT on (image, question) → edited image.

The objective is rectified flow matching on the target's latents: ``x_σ = (1 − σ)·x₀ + σ·ε`` with σ drawn
logit-normally, and the DiT asked for the velocity ``ε − x₀``. Everything the DiT sees is built by the
editor's own ``BatchedSampler`` — the reference image encoded, bn-normalised and packed, its tokens
concatenated after the noisy ones with the same position ids, the prompt from the task registry — and the
velocity comes from ``BatchedSampler.velocity``, the very call serving denoises with. So a LoRA trained here
is served exactly as it was trained.

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
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from etchr.imaging import ImageLimits
from etchr.settings import CommonSettings
from etchr.tasks import TaskRegistry
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.train.checkpoints import (
    MetricsLog,
    check_out_dir,
    save_checkpoint,
    start_run,
)
from etchr_editor.train.distributed import end_training
from etchr_editor.train.examples import TrainingBatch, load_examples, micro_batches
from etchr_editor.train.lora import DEFAULT_TARGETS, lora_parameters, save_lora, trainable_pipeline

logger = logging.getLogger("etchr.train.sft")

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
# What must match for a checkpoint to be resumed: the adapter's shape and what it was trained on top of.
_STRUCTURAL = ("model", "rank", "lora_alpha", "targets")


class SFTConfig(BaseModel):
    """One SFT run; the CLI's options, one to one (``etchr train sft --help``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    model: str
    out: Path
    steps: int = Field(default=1000, ge=1)
    resolution: int = Field(default=512, ge=64, description="pixel budget resolution² (aspect kept)")
    rank: int = Field(default=64, ge=1)
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha; None = rank (scale 1)")
    lr: float = Field(default=1e-4, gt=0)
    seed: int = 0
    batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    save_every: int = Field(default=500, ge=0, description="0 = only at the end")
    resume: bool = False
    mixed_precision: MixedPrecision = "auto"
    gradient_checkpointing: bool = False
    cache_text_embeddings: bool = False
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0, description="0 = no clipping")
    weight_decay: float = Field(default=1e-4, ge=0)
    logit_mean: float = 0.0
    logit_std: float = Field(default=1.0, gt=0)
    tasks_file: str | None = None
    progress: bool = True

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


def resolve_mixed_precision(value: MixedPrecision) -> Literal["no", "fp16", "bf16"]:
    if value == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return value


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
    mixed_precision = resolve_mixed_precision(config.mixed_precision)
    # cpu=True on a CPU-only machine lets torchrun/accelerate start gloo data-parallel runs there too.
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    out = config.out
    run_config = {**config.model_dump(mode="json"), "lora_alpha": config.lora_alpha}
    check_out_dir(out, resume=config.resume)

    settings = CommonSettings()
    tasks = TaskRegistry.from_file(config.tasks_file or settings.tasks_file)
    examples = load_examples(config.data, tasks, max_pixels=config.resolution**2)

    pipe = trainable_pipeline(
        config.model,
        device=accelerator.device,
        mixed_precision=mixed_precision,
        rank=config.rank,
        alpha=config.lora_alpha,
        targets=config.targets,
        seed=config.seed,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    transformer = pipe.transformer
    sampler = BatchedSampler(pipe, device=accelerator.device)

    embeddings = PromptEmbeddings(sampler)
    if config.cache_text_embeddings:
        embeddings.precompute([example.prompt for example in examples])
        pipe.text_encoder.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    params = lora_parameters(transformer)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # Stepped once per optimizer step by us (not by accelerate, which would step it once per process).
    lr_scheduler = get_scheduler(
        config.lr_schedule,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.steps,
    )
    model, optimizer = accelerator.prepare(transformer, optimizer)

    start = start_run(
        out,
        run_config,
        resume=config.resume,
        steps=config.steps,
        structural=_STRUCTURAL,
        order=("seed", "batch_size", "grad_accum", "resolution", "data"),
        transformer=transformer,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        main=main,
    )
    metrics = MetricsLog(out)
    world, rank = accelerator.num_processes, accelerator.process_index
    batches = micro_batches(
        examples,
        batch_size=config.batch_size,
        seed=config.seed,
        start=start * config.grad_accum * world,
        rank=rank,
        world_size=world,
        limits=ImageLimits.from_settings(settings),
        max_pixels=config.resolution**2,
    )
    logger.info(
        "SFT: %d examples, steps %d→%d, %d process(es) × batch %d × accumulation %d, mixed precision %s",
        len(examples), start, config.steps, world, config.batch_size, config.grad_accum, mixed_precision,
    )  # fmt: skip

    bar = tqdm(
        total=config.steps,
        initial=start,
        desc="sft",
        disable=not (main and config.progress),
        dynamic_ncols=True,
    )
    loss_value = math.nan
    model.train()
    for step in range(start + 1, config.steps + 1):
        total = torch.zeros((), device=accelerator.device)
        for micro in range(config.grad_accum):
            batch = next(batches)
            last = micro == config.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                loss = flow_matching_loss(
                    sampler,
                    batch,
                    embeddings=embeddings,
                    transformer=model,
                    seed=config.seed,
                    logit_mean=config.logit_mean,
                    logit_std=config.logit_std,
                )
                accelerator.backward(loss / config.grad_accum)
            total += loss.detach()
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(total / config.grad_accum, reduction="mean").item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower --lr or check the data")
        if main:
            metrics.append({"step": step, "loss": loss_value, "lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if (config.save_every and step % config.save_every == 0) or step == config.steps:
            accelerator.wait_for_everyone()
            if main:
                path = save_checkpoint(
                    out,
                    step,
                    transformer=transformer,
                    optimizer=optimizer,
                    lr_scheduler=lr_scheduler,
                    config=run_config,
                )
                logger.info("saved %s", path)
    bar.close()
    accelerator.wait_for_everyone()
    lora = out / "pytorch_lora_weights.safetensors"
    if main:
        lora = save_lora(transformer, out)
    del model, optimizer
    end_training(accelerator)
    return SFTResult(out=out, lora=lora, start_step=start, steps=config.steps, final_loss=loss_value)
