"""Stochastic (SDE) rollouts of the editor with per-step log-probabilities, for policy-gradient training.

The flow-GRPO formulation: the deterministic Euler step of rectified flow is replaced by the SDE with the
same marginals, ``x_{k+1} = μ_k + s_k·ε`` with

    s_k = η · sqrt(σ_k / (1 − σ_k)) · sqrt(σ_k − σ_{k+1})
    μ_k = x_k · (1 + s²/(2σ_k)·dt) + v_k · (1 + s²·(1 − σ_k)/(2σ_k)) · dt,   dt = σ_{k+1} − σ_k  (< 0)

(σ_k = 1 at the first step is replaced by σ_1 in the ratio), so each step is a Gaussian policy whose
log-probability of the recorded ``x_{k+1}`` can be recomputed under an updated DiT. Everything else — the
conditioning, the velocity (CFG only where a request's guidance is > 1, as serving does: at 1.0 one DiT
forward per step), the schedule, the start noise and the decoding — is ``BatchedSampler``'s: rollouts are
served-editor edits with noise injected, not a second sampler.

Two choices follow the authors' release by default and keep the older behaviour one argument away:

- **What is decoded** (``reward_image``): ``"x0"`` decodes the clean prediction of the last step,
  ``x̂₀ = x_K − σ_K·v_K`` (rectified flow: ``x_σ = (1 − σ)·x₀ + σ·ε`` and ``v = ε − x₀``; the same
  ``sample − σ·model_output`` diffusers' ``FlowMatchEulerDiscreteScheduler`` takes as x₀, and what its
  deterministic last step, to σ = 0, returns). ``"final"`` decodes the last SDE sample, which still carries
  the last step's injected noise.
- **Start noise** (``shared_noise``): ``True`` starts every rollout of a request from the start noise of its
  first seed, so a group's edits differ only by their per-step SDE noise (each rollout's own seed);
  ``False`` gives each rollout the start noise of its own seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image
import torch

from etchr_editor.sampler import BatchedSampler, Conditioning, SampleRequest

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

RewardImage = Literal["x0", "final"]
REWARD_IMAGES: tuple[RewardImage, ...] = ("x0", "final")


@dataclass
class SDEStep:
    prev: torch.Tensor  # (B, N, C) x_{k+1}
    mean: torch.Tensor  # (B, N, C) μ_k
    std: torch.Tensor  # (B, 1, 1) s_k
    log_prob: torch.Tensor  # (B,) mean over elements of log N(prev; mean, s²)


def sde_step(
    velocity: torch.Tensor,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    step: int,
    *,
    eta: float,
    noise: torch.Tensor | None = None,
    prev: torch.Tensor | None = None,
) -> SDEStep:
    """Denoising step ``step`` of the schedule ``sigmas`` (σ to σ_next) as an SDE step, for every row of
    ``latents``; samples ``prev`` from ``noise`` unless ``prev`` is given.

    Computed in float32: the log-probability ratios of PPO-style updates are differences of large numbers.
    """
    rows = latents.shape[0]
    sigma_max = float(sigmas[1]) if sigmas.numel() > 1 else 1.0
    v, x = velocity.float(), latents.float()
    sigma = sigmas[step].expand(rows).view(rows, 1, 1).float()
    sigma_next = sigmas[step + 1].expand(rows).view(rows, 1, 1).float()
    dt = sigma_next - sigma
    denominator = 1 - torch.where(sigma >= 1, torch.full_like(sigma, sigma_max), sigma)
    std_dev = eta * torch.sqrt(sigma / denominator)
    mean = x * (1 + std_dev**2 / (2 * sigma) * dt) + v * (1 + std_dev**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_dev * torch.sqrt(-dt)
    if prev is None:
        if noise is None:
            raise ValueError("sde_step needs the noise to sample with, or the recorded prev")
        prev = mean + std * noise.float()
    log_prob = -((prev.detach().float() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return SDEStep(prev=prev.float(), mean=mean, std=std, log_prob=log_prob.mean(dim=(1, 2)))


@dataclass
class Trajectories:
    """The recorded rollouts of one chunk of rows (requests × seeds), everything the update needs."""

    cond: Conditioning
    sigmas: torch.Tensor  # (steps + 1,) the schedule, ending at 0
    timesteps: torch.Tensor  # (steps,) what the DiT was given (σ · 1000)
    latents: torch.Tensor  # (steps, B, N, C) x_k, float32; latents[0] is the start noise
    next_latents: torch.Tensor  # (steps, B, N, C) x_{k+1}
    log_probs: torch.Tensor  # (steps, B)
    images: list[PIL.Image.Image]  # the decoded edits, one per row (what ``reward_image`` names)
    eta: float
    reward_image: RewardImage = "x0"

    @property
    def steps(self) -> int:
        return self.latents.shape[0]

    def step_log_prob(
        self, sampler: BatchedSampler, step: int, *, transformer: torch.nn.Module | None = None
    ) -> SDEStep:
        """The SDE step ``step`` of every row re-evaluated under ``transformer`` (the current policy)."""
        x = self.latents[step]
        velocity = sampler.velocity(self.cond, x, self.timesteps[step], transformer=transformer)
        return sde_step(velocity, x, self.sigmas, step, eta=self.eta, prev=self.next_latents[step])


def step_noise_seed(seed: int, step: int) -> int:
    """Seed of a rollout's SDE noise at one denoising step: reproducible per (rollout seed, step)."""
    return int(np.random.SeedSequence([seed, 7919, step]).generate_state(1, dtype=np.uint64)[0])


@torch.no_grad()
def sample_trajectories(
    sampler: BatchedSampler,
    requests: Sequence[SampleRequest],
    *,
    eta: float,
    transformer: torch.nn.Module | None = None,
    reward_image: RewardImage = "x0",
    shared_noise: bool = True,
) -> Trajectories:
    """One SDE rollout per (request, seed), all rows in one loop; requests must share ``batch_key``.

    A rollout's ``seed`` fixes its per-step SDE noise, and its start noise (as serving draws it) unless
    ``shared_noise``, where every rollout of a request starts from the noise of the request's first seed.
    The same policy and seeds give the same trajectories. Rows are ordered request by request, seed by seed.
    ``reward_image`` picks what is decoded into ``images`` (module docstring).
    """
    if not requests:
        raise ValueError("no requests to roll out")
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic policy, got {eta}")
    if reward_image not in REWARD_IMAGES:
        raise ValueError(f"reward_image must be one of {REWARD_IMAGES}, got {reward_image!r}")
    sampler.validate(requests)
    rows = [(index, seed) for index, request in enumerate(requests) for seed in request.seeds]
    cond = sampler.rows_conditioning(sampler.encode_requests(requests), rows)
    device = sampler.device
    seeds = [seed for _, seed in rows]
    start_seeds = [requests[index].seeds[0] for index, _ in rows] if shared_noise else seeds
    latents = sampler.initial_latents(start_seeds, cond.width, cond.height).float()
    scheduler, timesteps = sampler.schedule(requests[0].steps, cond.width, cond.height)
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    recorded, following, log_probs = [], [], []
    decoded = latents
    for k, t in enumerate(timesteps):
        velocity = sampler.velocity(cond, latents, t, transformer=transformer)
        noise = torch.cat([_noise(latents.shape[1:], step_noise_seed(seed, k)) for seed in seeds]).to(device)
        step = sde_step(velocity, latents, sigmas, k, eta=eta, noise=noise)
        recorded.append(latents)
        following.append(step.prev)
        log_probs.append(step.log_prob)
        if k == len(timesteps) - 1:
            decoded = latents - sigmas[k] * velocity.float() if reward_image == "x0" else step.prev
        latents = step.prev
    images = sampler.decode(decoded.to(sampler.pipe.transformer.dtype), cond.width, cond.height)
    return Trajectories(
        cond=cond,
        sigmas=sigmas,
        timesteps=timesteps.to(device),
        latents=torch.stack(recorded),
        next_latents=torch.stack(following),
        log_probs=torch.stack(log_probs),
        images=images,
        eta=eta,
        reward_image=reward_image,
    )


def _noise(shape: torch.Size, seed: int) -> torch.Tensor:
    """One row of standard normal noise from its own CPU generator (device-independent, like serving)."""
    return torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed))
