"""One training run, as every trainer (``sft``, ``rl``) sets it up, logs it, checkpoints it and ends it.

:class:`RunOptions` are the options all trainers share; each trainer's config adds its own and sets its
defaults. :meth:`TrainingRun.open` does the setup in one order for all of them: the accelerator and its mixed
precision, the output folder check, the examples, the editor pipeline with a fresh LoRA adapter, the
optimizer, resuming from the latest checkpoint, ``metrics.jsonl`` and the progress bar. The trainer then
runs its steps and hands each step's metrics row to :meth:`TrainingRun.end_step` (logged, checkpointed when
due); :meth:`TrainingRun.finish` writes the final LoRA and ends the (possibly multi-process) run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from diffusers import Flux2KleinPipeline
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from etchr.imaging import ImageLimits
from etchr.settings import EditorSettings
from etchr.tasks import TaskRegistry
from etchr_editor.sampler import BatchedSampler
from etchr_train.checkpoints import MetricsLog, check_out_dir, save_checkpoint, start_run
from etchr_train.distributed import end_training
from etchr_train.examples import TrainingBatch, TrainingExample, load_examples, micro_batches
from etchr_train.lora import LORA_WEIGHTS, RL_TARGETS, lora_parameters, save_lora, trainable_pipeline

logger = logging.getLogger("etchr.train")

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Schedule = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def resolve_mixed_precision(value: MixedPrecision) -> Literal["no", "fp16", "bf16"]:
    """``auto`` is bf16 on a GPU and full precision on the CPU."""
    if value == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return value


class RunOptions(BaseModel):
    """The options every trainer has; ``steps``, ``lr`` and ``save_every`` take each trainer's defaults.

    ``resolution`` and ``targets`` default to Stage II's values here; ``SFTConfig`` sets its own (the editor's
    pixel budget, every Linear layer of the DiT blocks).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    model: str
    out: Path
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    save_every: int = Field(ge=0, description="0 = only at the end")
    resolution: int | None = Field(
        default=512,
        ge=64,
        description="pixel budget resolution² (aspect kept); None: the editor's budget",
    )
    rank: int = Field(default=64, ge=1)
    targets: tuple[str, ...] = RL_TARGETS
    seed: int = 0
    resume: bool = False
    mixed_precision: MixedPrecision = "auto"
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(default=1.0, ge=0, description="0 = no clipping")
    tasks_file: str | None = None
    progress: bool = True

    def max_pixels(self, settings: EditorSettings) -> int:
        """The pixel budget images are fitted into (``fit_model_size``, as the editor fits them): resolution²,
        or with ``resolution`` None the editor's own budget, ``ETCHR_EDITOR_MAX_MODEL_PIXELS`` (1 MP)."""
        return settings.editor_max_model_pixels if self.resolution is None else self.resolution**2


@dataclass
class TrainingRun:
    """A run set up by :meth:`open`: what the trainer's steps work with, and the step it resumed from."""

    options: RunOptions
    run_config: Mapping[str, Any]  # what train_config.json and each checkpoint record
    accelerator: Accelerator
    settings: EditorSettings
    max_pixels: int  # the pixel budget every image is fitted into
    examples: list[TrainingExample]
    pipe: Flux2KleinPipeline
    sampler: BatchedSampler
    params: list[torch.nn.Parameter]  # the adapter's trainable weights
    model: torch.nn.Module  # the DiT as accelerate prepared it (DDP): gradients go through it
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    start: int  # the step done before this process started: 0, or the resumed checkpoint's
    metrics: MetricsLog
    bar: tqdm

    @classmethod
    def open(
        cls,
        options: RunOptions,
        *,
        name: str,
        run_config: Mapping[str, Any],
        alpha: float,
        weight_decay: float,
        schedule: Schedule,
        structural: Sequence[str],
        order: Sequence[str],
        fused_loras: Sequence[str] = (),
        require_target: bool = True,
    ) -> TrainingRun:
        """Set the run up; resume from ``out``'s latest checkpoint when ``options.resume``.

        ``schedule`` makes the optimizer's learning-rate schedule (stepped once per :meth:`update`).
        ``structural`` keys of ``run_config`` must match a resumed checkpoint's; a changed ``order`` key only
        warns (see ``checkpoints.start_run``). ``fused_loras`` are earlier LoRAs fused into the base first;
        ``require_target`` refuses rows without an edited image. The pixel budget the run resolves
        (:meth:`RunOptions.max_pixels`) is recorded in ``run_config`` as ``max_pixels``, an ``order`` key.
        """
        mixed_precision = resolve_mixed_precision(options.mixed_precision)
        # cpu=True on a CPU-only machine lets torchrun/accelerate start gloo data-parallel runs there too.
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
        check_out_dir(options.out, resume=options.resume)

        settings = EditorSettings()  # the editor's: its pixel budget and input limits are the run's
        max_pixels = options.max_pixels(settings)
        run_config = {**run_config, "max_pixels": max_pixels}
        order = (*order, "max_pixels")
        tasks = TaskRegistry.from_file(options.tasks_file or settings.tasks_file)
        examples = load_examples(options.data, tasks, max_pixels=max_pixels, require_target=require_target)

        pipe = trainable_pipeline(
            options.model,
            device=accelerator.device,
            mixed_precision=mixed_precision,
            rank=options.rank,
            alpha=alpha,
            targets=options.targets,
            seed=options.seed,
            fused_loras=fused_loras,
            gradient_checkpointing=options.gradient_checkpointing,
        )
        sampler = BatchedSampler(pipe, device=accelerator.device)
        params = lora_parameters(pipe.transformer)
        optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=weight_decay)
        lr_scheduler = schedule(optimizer)  # stepped by update(), not by accelerate (once per process)
        model, optimizer = accelerator.prepare(pipe.transformer, optimizer)

        start = start_run(
            options.out,
            run_config,
            resume=options.resume,
            steps=options.steps,
            structural=structural,
            order=order,
            transformer=pipe.transformer,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            main=accelerator.is_main_process,
        )
        bar = tqdm(
            total=options.steps,
            initial=start,
            desc=name,
            disable=not (accelerator.is_main_process and options.progress),
            dynamic_ncols=True,
        )
        return cls(
            options=options,
            run_config=run_config,
            accelerator=accelerator,
            settings=settings,
            max_pixels=max_pixels,
            examples=examples,
            pipe=pipe,
            sampler=sampler,
            params=params,
            model=model,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            start=start,
            metrics=MetricsLog(options.out),
            bar=bar,
        )

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def transformer(self) -> torch.nn.Module:
        """The DiT unwrapped: adapters are switched, saved and loaded on it."""
        return self.pipe.transformer

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def steps(self) -> range:
        """The steps this process trains: after the resumed one, up to ``steps``."""
        return range(self.start + 1, self.options.steps + 1)

    def batches(self, batch_size: int, *, per_step: int = 1) -> Iterator[TrainingBatch]:
        """This process's micro-batches of one global, seeded stream, from where the resumed run stopped:
        each of the ``world`` processes takes every ``world``-th one, ``per_step`` of them per step."""
        return micro_batches(
            self.examples,
            batch_size=batch_size,
            seed=self.options.seed,
            start=self.start * per_step * self.world,
            rank=self.rank,
            world_size=self.world,
            limits=ImageLimits.from_settings(self.settings),
            max_pixels=self.max_pixels,
        )

    def update(self) -> float:
        """One optimizer step on the gradients gathered since the last: clip them to ``max_grad_norm`` (0 =
        no clipping), step the optimizer and the schedule, zero them. Returns the learning rate used."""
        if self.options.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, self.options.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def end_step(self, step: int, row: Mapping[str, Any], **shown: str) -> None:
        """Log the step's metrics row (main process), show ``shown`` on the progress bar, and checkpoint
        every ``save_every`` steps and at the last one."""
        if self.main:
            self.metrics.append(row)
        self.bar.update(1)
        self.bar.set_postfix(**shown)
        save_every = self.options.save_every
        if (save_every and step % save_every == 0) or step == self.options.steps:
            self.accelerator.wait_for_everyone()
            if self.main:
                path = save_checkpoint(
                    self.options.out,
                    step,
                    transformer=self.transformer,
                    optimizer=self.optimizer,
                    lr_scheduler=self.lr_scheduler,
                    config=self.run_config,
                )
                logger.info("saved %s", path)

    def finish(self) -> Path:
        """Write ``OUT/pytorch_lora_weights.safetensors`` (main process) and end the run on every process.

        The prepared model and optimizer are dropped first (see ``distributed.end_training``): the run cannot
        train after this, and the trainer must hold no reference of its own to them.
        """
        self.bar.close()
        self.accelerator.wait_for_everyone()
        lora = self.options.out / LORA_WEIGHTS
        if self.main:
            lora = save_lora(self.transformer, self.options.out)
        del self.model, self.optimizer
        end_training(self.accelerator)
        return lora
