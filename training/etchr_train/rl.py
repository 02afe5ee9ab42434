"""Stage II (Reasoning Enhancement): Pref-GRPO of the editor's LoRA through the reward service.

Each step, for ``prompts_per_step`` (image, question) rows, the editor samples G edits with the SDE sampler
of ``rollouts`` (its log-probabilities recorded; by default as the authors' release samples them: guidance
1.0, so one DiT forward per step, one start noise per group, and the last step's x0-prediction decoded for
the reward), the reward service scores each group with
``advantage="pref-grpo"`` (win rates → advantages, docs/api.md), and the LoRA is updated with the clipped
policy-gradient objective on a fraction of the recorded timesteps, optionally with a KL term to the
reference policy (the adapter disabled). Scoring a group overlaps the sampling of the next; a group is
always sampled, and therefore scored, on one process, so its advantages are normalised over the whole group.

A reward service that fails stops training with :class:`RewardUnavailable`: a step is never trained on
missing or invented rewards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from etchr.clients.reward import RewardClient, RewardResult, RewardServiceError
from etchr.imaging import encode_png_base64
from etchr_editor.sampler import SampleRequest
from etchr_train.checkpoints import latest_checkpoint, read_run_config
from etchr_train.examples import TrainingBatch
from etchr_train.rollouts import RewardImage, Trajectories, sample_trajectories
from etchr_train.training_run import RunOptions, TrainingRun

logger = logging.getLogger("etchr.train")

_STRUCTURAL = ("model", "lora", "rank", "alpha", "targets")
# How rollouts are sampled: not structural (any adapter samples under any of them) and not the data order,
# so a resume may change them; it is told when it does. A checkpoint written before a key existed was
# sampled the way the trainer did then: these values.
_ROLLOUT_KEYS_BEFORE = {"guidance_scale": 3.5, "reward_image": "final", "shared_noise": False}


class RewardUnavailable(RuntimeError):
    """The reward service gave no usable rewards; the step was not trained."""


class RLConfig(RunOptions):
    """One RL run; the CLI's options, one to one (``etchr train rl --help``)."""

    steps: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-5, gt=0)
    save_every: int = Field(default=50, ge=0, description="0 = only at the end")
    lora: tuple[str, ...] = Field(default=(), description="Stage I LoRA(s), fused into the base first")
    reward_url: str = "http://localhost:8003"
    reward_api_key: str | None = None
    group_size: int = Field(default=8, ge=2, description="G edits per (image, question)")
    prompts_per_step: int = Field(default=4, ge=1, description="groups per step and process")
    sample_steps: int = Field(default=25, ge=1)
    guidance_scale: float = Field(
        default=1.0, ge=0, description="rollout CFG; ≤ 1 = no CFG, one DiT forward per step (the release)"
    )
    reward_image: RewardImage = Field(
        default="x0", description="decoded for the reward: the last step's x0-prediction, or the final sample"
    )
    shared_noise: bool = Field(default=True, description="one start noise per group (SDE noise per rollout)")
    eta: float = Field(default=0.7, gt=0, description="SDE noise level")
    alpha: float = Field(default=128.0, gt=0, description="LoRA alpha")
    clip_range: float = Field(default=1e-4, gt=0)
    adv_clip: float = Field(default=5.0, gt=0)
    kl_beta: float = Field(default=0.0, ge=0)
    timestep_fraction: float = Field(default=0.6, gt=0, le=1)
    minibatches: int = Field(default=2, ge=1, description="optimizer updates per step")
    k: int = Field(default=4, ge=1, le=32, description="MLLM decodings per reward query")
    reward_alpha: float = Field(default=0.5, ge=0, le=1, description="R = α·R_guid + (1 − α)·R_corr")


@dataclass(frozen=True)
class RLResult:
    out: Path
    lora: Path
    start_step: int
    steps: int


@dataclass
class _Group:
    """One group's recorded rollouts, its reward request in flight and, once scored, its advantages."""

    trajectories: Trajectories
    reward: Future[RewardResult]
    advantages: torch.Tensor | None = None


def rollout_seed(seed: int, step: int, rank: int, row: int, rollout: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, row, rollout]).generate_state(1)[0])


def policy_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate (PPO/GRPO) per row, and which rows were clipped."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped), (ratio - 1).abs() > clip_range


def reward_items(batch: TrainingBatch, rollouts: Trajectories, group_size: int, tag: str) -> list[dict]:
    """One /reward item per row of the batch: its group of G edits, in rollout order."""
    items = []
    for index, (example, image) in enumerate(zip(batch.examples, batch.images, strict=True)):
        edits = rollouts.images[index * group_size : (index + 1) * group_size]
        items.append(
            {
                "id": f"{example.id}@{tag}",
                "image": encode_png_base64(image),
                "question": example.question,
                "answer": example.answer,
                "task": example.task,
                "scorer": example.scorer,
                "meta": example.meta,
                "edits": [encode_png_base64(edit) for edit in edits],
            }
        )
    return items


def rollout_changes(saved: dict, config: RLConfig) -> list[str]:
    """The rollout settings of a checkpoint's ``saved`` configuration that ``config`` changes, as
    ``key old → new``; a key the checkpoint predates counts with its value from before it existed."""
    current = config.model_dump(mode="json")
    changes = []
    for key, before in _ROLLOUT_KEYS_BEFORE.items():
        old = saved.get(key, before)
        if old != current[key]:
            note = "" if key in saved else " (not recorded: the checkpoint predates it)"
            changes.append(f"{key} {old!r} → {current[key]!r}{note}")
    return changes


def _warn_on_changed_rollouts(config: RLConfig) -> None:
    checkpoint = latest_checkpoint(config.out) if config.resume else None
    if checkpoint is None:
        return
    saved = read_run_config(checkpoint)
    changes = rollout_changes(saved, config)
    if changes:
        logger.warning(
            "resuming %s with changed rollout sampling: %s (pass the checkpoint's values to keep sampling "
            "as it did: --guidance-scale, --reward-image, --shared-noise/--no-shared-noise)",
            checkpoint,
            "; ".join(changes),
        )


def train_rl(config: RLConfig) -> RLResult:
    """Train, checkpoint every ``save_every`` steps and at the end, write ``OUT/pytorch_lora_weights``;
    :class:`RewardUnavailable` when the reward service fails."""
    _warn_on_changed_rollouts(config)
    run = TrainingRun.open(
        config,
        name="rl",
        run_config=config.model_dump(mode="json", exclude={"reward_api_key"}),
        alpha=config.alpha,
        weight_decay=1e-4,
        schedule=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        structural=_STRUCTURAL,
        order=("seed", "prompts_per_step", "group_size", "resolution", "data"),
        fused_loras=config.lora,  # a Stage I LoRA is fused: the reference policy of the KL term
        require_target=False,
    )
    batches = run.batches(config.prompts_per_step)
    rewards = _Rewards(
        client=RewardClient(config.reward_url, api_key=config.reward_api_key, retries=2, backoff_s=0.5),
        scorer=ThreadPoolExecutor(max_workers=2, thread_name_prefix="reward"),
    )
    try:
        for step in run.steps():
            row = _train_step(config, step, next(batches), run, rewards)
            run.end_step(step, row, reward=f"{row['reward_mean']:.3f}", loss=f"{row['loss']:.4f}")
    finally:
        run.bar.close()
        rewards.scorer.shutdown(wait=False, cancel_futures=True)
        rewards.client.close()
    lora = run.finish()
    return RLResult(out=config.out, lora=lora, start_step=run.start, steps=config.steps)


@dataclass(frozen=True)
class _Rewards:
    """The reward service's client, and the threads that wait on it while the next group samples."""

    client: RewardClient
    scorer: ThreadPoolExecutor


def _train_step(
    config: RLConfig, step: int, batch: TrainingBatch, run: TrainingRun, rewards: _Rewards
) -> dict[str, float]:
    """Sample every group (scoring each while the next samples), then update; one metrics row."""
    sampler, model, transformer, accelerator = run.sampler, run.model, run.transformer, run.accelerator
    started = time.perf_counter()
    rank = run.rank
    groups: list[_Group] = []
    sample_s = 0.0
    transformer.eval()
    for index, (example, image) in enumerate(zip(batch.examples, batch.images, strict=True)):
        seeds = tuple(rollout_seed(config.seed, step, rank, index, g) for g in range(config.group_size))
        request = SampleRequest(
            image=image,
            prompt=example.prompt,
            seeds=seeds,
            steps=config.sample_steps,
            guidance_scale=config.guidance_scale,
        )
        sampled = time.perf_counter()
        rollouts = sample_trajectories(
            sampler,
            [request],
            eta=config.eta,
            reward_image=config.reward_image,
            shared_noise=config.shared_noise,
        )
        sample_s += time.perf_counter() - sampled
        single = TrainingBatch(index=batch.index, examples=[example], images=[image], targets=[])
        items = reward_items(single, rollouts, config.group_size, f"{step}.{rank}.{index}")
        future = rewards.scorer.submit(
            rewards.client.reward, items, alpha=config.reward_alpha, k=config.k, advantage="pref-grpo"
        )
        groups.append(_Group(trajectories=rollouts, reward=future))

    waited = time.perf_counter()
    rewards: list[float] = []
    guidance: list[float] = []
    correctness: list[float] = []
    for group in groups:
        try:
            result = group.reward.result()
        except RewardServiceError as exc:
            raise RewardUnavailable(
                f"reward service at {config.reward_url} failed at step {step} ({exc}); training stopped, "
                "this step was not trained"
            ) from exc
        [item] = result.items
        if item.advantages is None or len(item.advantages) != config.group_size:
            raise RewardUnavailable(f"reward service returned no advantages for {item.id} at step {step}")
        group.advantages = torch.tensor(item.advantages, dtype=torch.float32, device=accelerator.device)
        rewards += [r.reward for r in item.rewards]
        guidance += [r.guidance for r in item.rewards]
        correctness += [r.correctness for r in item.rewards]
    reward_wait_s = time.perf_counter() - waited

    updated = time.perf_counter()
    model.train()
    chosen = _chosen_timesteps(config, step)
    units = [(group, k) for group in groups for k in chosen]
    losses, clipped, kls = [], [], []
    for part in np.array_split(np.arange(len(units)), min(config.minibatches, len(units))):
        for position, unit in enumerate(part):
            group, k = units[int(unit)]
            assert group.advantages is not None
            last = position == len(part) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                new = group.trajectories.step_log_prob(sampler, k, transformer=model)
                advantages = group.advantages.clamp(-config.adv_clip, config.adv_clip)
                surrogate, was_clipped = policy_loss(
                    new.log_prob, group.trajectories.log_probs[k], advantages, config.clip_range
                )
                loss = surrogate.mean()
                if config.kl_beta > 0:
                    with torch.no_grad():
                        transformer.disable_adapters()
                        try:
                            reference = group.trajectories.step_log_prob(sampler, k, transformer=model)
                        finally:
                            transformer.enable_adapters()
                    squared = ((new.mean - reference.mean) ** 2).mean(dim=(1, 2))
                    kl = (squared / (2 * new.std.view(-1) ** 2)).mean()
                    loss = loss + config.kl_beta * kl
                    kls.append(kl.detach())
                accelerator.backward(loss / len(part))
            losses.append(loss.detach())
            clipped.append(was_clipped.float().mean())
        run.update()
    update_s = time.perf_counter() - updated

    def mean(values: Sequence[float] | Sequence[torch.Tensor]) -> float:
        if not values:
            return 0.0
        tensor = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).to(accelerator.device)
        return accelerator.reduce(tensor.mean(), reduction="mean").item()

    row = {
        "step": step,
        "reward_mean": mean(rewards),
        "guidance_mean": mean(guidance),
        "correctness_mean": mean(correctness),
        "loss": mean(losses),
        "clip_frac": mean(clipped),
        "kl": mean(kls),
        "sample_s": sample_s,
        "reward_wait_s": reward_wait_s,
        "update_s": update_s,
        "step_s": time.perf_counter() - started,
    }
    if not math.isfinite(row["loss"]):
        raise FloatingPointError(f"loss is {row['loss']} at step {step}; lower --lr")
    return row


def _chosen_timesteps(config: RLConfig, step: int) -> list[int]:
    """A seeded ``timestep_fraction`` of the denoising steps to train on (at least one)."""
    count = max(1, round(config.timestep_fraction * config.sample_steps))
    rng = np.random.default_rng([config.seed, step, 104729])
    return sorted(rng.choice(config.sample_steps, size=count, replace=False).tolist())
