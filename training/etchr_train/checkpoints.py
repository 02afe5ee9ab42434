"""What a training run leaves in ``OUT``: ``checkpoint-N/`` folders, ``metrics.jsonl`` and the final LoRA.

A checkpoint holds the LoRA in the diffusers format (servable as it is) and ``training_state.pt`` with the
optimizer, the learning-rate schedule, the step and the run's configuration, which is all a resume needs:
the data order and the noise are functions of (seed, micro-batch index), not of saved RNG states.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from etchr_train.lora import LORA_WEIGHTS, load_lora, save_lora

logger = logging.getLogger("etchr.train")

METRICS = "metrics.jsonl"
STATE = "training_state.pt"
CONFIG = "train_config.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"checkpoint-{step}"


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None; half-written ones are skipped."""
    found: list[tuple[int, Path]] = []
    if out.is_dir():
        for path in out.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match and (path / STATE).is_file() and (path / LORA_WEIGHTS).is_file():
                found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def save_checkpoint(
    out: Path,
    step: int,
    *,
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: Mapping[str, Any],
) -> Path:
    """Write ``checkpoint-step`` via a folder renamed at the end: a crash leaves no half checkpoint."""
    final = checkpoint_dir(out, step)
    partial = out / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_lora(transformer, partial)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "config": dict(config),
        },
        partial / STATE,
    )
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def check_out_dir(out: Path, *, resume: bool) -> None:
    """Refuse to mix two runs in one folder: an earlier run's checkpoints are resumed or left alone."""
    if resume or not out.exists():
        return
    if latest_checkpoint(out) is not None or (out / METRICS).exists():
        raise ValueError(
            f"{out} already holds a training run; pass --resume to continue it, or pick another --out"
        )


def read_training_state(path: Path) -> dict[str, Any]:
    """The checkpoint's step, configuration, optimizer and schedule states (read before anything is loaded,
    so a run that cannot resume it says why instead of failing on tensor shapes)."""
    return torch.load(path / STATE, map_location="cpu", weights_only=False)


def read_run_config(path: Path) -> dict[str, Any]:
    """Only the configuration a checkpoint was saved with; the file is memory-mapped, so the optimizer state
    beside it is not read (``read_training_state`` loads that once, when the run resumes)."""
    return torch.load(path / STATE, map_location="cpu", weights_only=False, mmap=True)["config"]


def load_checkpoint(
    path: Path,
    state: Mapping[str, Any],
    *,
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Restore adapter weights, optimizer and schedule from ``path`` and its ``read_training_state``."""
    load_lora(transformer, path)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])


class MetricsLog:
    """``metrics.jsonl``: one JSON object per optimizer step, appended and flushed as training goes."""

    def __init__(self, out: Path) -> None:
        self.path = out / METRICS

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows past the checkpoint (steps that will be trained again)."""
        if not self.path.is_file():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def start_run(
    out: Path,
    run_config: Mapping[str, Any],
    *,
    resume: bool,
    steps: int,
    structural: Sequence[str],
    order: Sequence[str],
    transformer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    main: bool,
) -> int:
    """Resume from ``out``'s latest checkpoint (with ``resume``), prepare ``out``; returns the step done.

    ``structural`` keys must match the checkpoint's configuration (the adapter could not be loaded
    otherwise); a changed ``order`` key only warns, since it changes which data the run sees next.
    """
    start = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        state = read_training_state(checkpoint)
        saved = state["config"]
        for key in structural:
            if saved.get(key) != run_config.get(key):
                raise ValueError(
                    f"cannot resume {checkpoint}: it was trained with {key}={saved.get(key)!r}, "
                    f"this run asks for {run_config.get(key)!r}"
                )
        changed = [key for key in order if saved.get(key) != run_config.get(key)]
        if changed:
            logger.warning("resuming with changed %s: the data order differs from the original run", changed)
        load_checkpoint(
            checkpoint, state, transformer=transformer, optimizer=optimizer, lr_scheduler=lr_scheduler
        )
        start = int(state["step"])
        logger.info("resuming from %s (step %d)", checkpoint, start)
    if start >= steps:
        raise ValueError(f"{checkpoint} is already at step {start}; ask for more --steps than that to go on")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        MetricsLog(out).truncate_after(start)
        (out / CONFIG).write_text(json.dumps(dict(run_config), indent=2) + "\n")
    return start
