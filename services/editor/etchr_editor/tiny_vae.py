"""Fit the tiny pipeline's VAE as a real autoencoder of simple synthetic pictures (``tiny-editor --fit-vae``).

A random-init VAE decodes every latent to nearly the same image: its normalisation layers erase the
differences between latents (across random latents the per-image mean colour varies by ~0.3 % of the range),
so an image-level reward computed on the tiny model's outputs cannot move and RL on it tests nothing. A
minute of CPU training on coloured shapes and mazes makes the decoder carry colour and layout, and the
latent normalisation statistics the pipeline applies (``vae.bn``) are then measured on those latents, so the
DiT sees ~N(0, 1) reference tokens and its ~N(0, 1) outputs decode to varied pictures. The architecture is
the one ``build_tiny_pipeline`` makes, so the checkpoint's shapes do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline
from tqdm.auto import tqdm

IMAGE_SIDE = 64  # the smallest side the pipeline accepts; the fitted VAE is convolutional, so it generalises
FIT_STEPS = 800  # what the CLI ships: ~45 s on 2 idle CPU cores
WARM_FRACTION = 0.6  # measured best of 0.3 / 0.5 / 0.6 / 0.75 at 800 steps
BATCH_SIZE = 8
LEARNING_RATE = 2e-3
KL_WEIGHT = 1e-4  # small: reconstructions first, but the latents stay bounded and roughly Gaussian
STATS_IMAGES = 256  # images the bn statistics are measured on
MAZE_FRACTION = 0.3


# ---------------------------------------------------------------- synthetic pictures


def synthetic_images(count: int, seed: int, side: int = IMAGE_SIDE) -> list[PIL.Image.Image]:
    """``count`` RGB pictures, the same for a ``seed``: coloured shapes or mazes on coloured grounds."""
    rng = np.random.default_rng(seed)
    return [_maze(rng, side) if rng.random() < MAZE_FRACTION else _shapes(rng, side) for _ in range(count)]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _shapes(rng: np.random.Generator, side: int) -> PIL.Image.Image:
    """A plain or two-tone background with 1–5 filled rectangles, ellipses, triangles or thick lines."""
    image = PIL.Image.new("RGB", (side, side), _colour(rng))
    draw = PIL.ImageDraw.Draw(image)
    if rng.random() < 0.3:  # a horizon: two-tone ground
        draw.rectangle((0, int(rng.integers(side // 4, 3 * side // 4)), side, side), fill=_colour(rng))
    for _ in range(int(rng.integers(1, 6))):
        kind = int(rng.integers(0, 4))
        x0, y0 = (int(v) for v in rng.integers(-side // 8, side, 2))
        w, h = (int(v) for v in rng.integers(side // 8, side // 2, 2))
        box = (x0, y0, x0 + w, y0 + h)
        fill = _colour(rng)
        if kind == 0:
            draw.rectangle(box, fill=fill)
        elif kind == 1:
            draw.ellipse(box, fill=fill)
        elif kind == 2:
            points = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(3)]
            draw.polygon(points, fill=fill)
        else:
            ends = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(2)]
            draw.line(ends, fill=fill, width=int(rng.integers(2, 6)))
    return image


def _maze(rng: np.random.Generator, side: int) -> PIL.Image.Image:
    """A depth-first-search maze: walls on a floor, often with its start→goal solution path drawn in."""
    cells = int(rng.choice([4, 6, 8]))
    pitch = side / cells
    floor, wall, path_colour = _colour(rng), _colour(rng), _colour(rng)
    image = PIL.Image.new("RGB", (side, side), floor)
    draw = PIL.ImageDraw.Draw(image)
    parent: dict[tuple[int, int], tuple[int, int]] = {(0, 0): (0, 0)}
    stack = [(0, 0)]
    while stack:  # carve passages: every cell reached once, from its parent
        row, col = stack[-1]
        options = [
            (row + dr, col + dc)
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
            if 0 <= row + dr < cells and 0 <= col + dc < cells and (row + dr, col + dc) not in parent
        ]
        if not options:
            stack.pop()
            continue
        nxt = options[int(rng.integers(0, len(options)))]
        parent[nxt] = (row, col)
        stack.append(nxt)
    open_edges = {frozenset((cell, up)) for cell, up in parent.items() if cell != up}
    width = max(1, int(pitch // 4))
    for row in range(cells):
        for col in range(cells):
            x, y = col * pitch, row * pitch
            if col + 1 < cells and frozenset(((row, col), (row, col + 1))) not in open_edges:
                draw.line((x + pitch, y, x + pitch, y + pitch), fill=wall, width=width)
            if row + 1 < cells and frozenset(((row, col), (row + 1, col))) not in open_edges:
                draw.line((x, y + pitch, x + pitch, y + pitch), fill=wall, width=width)
    draw.rectangle((0, 0, side - 1, side - 1), outline=wall, width=width)
    if rng.random() < 0.6:
        cell, route = (cells - 1, cells - 1), []
        while cell != (0, 0):
            route.append(cell)
            cell = parent[cell]
        route.append(cell)
        centres = [((c + 0.5) * pitch, (r + 0.5) * pitch) for r, c in route]
        draw.line(centres, fill=path_colour, width=max(2, int(pitch // 3)))
    return image


def to_pixels(images: list[PIL.Image.Image]) -> torch.Tensor:
    """PIL images → ``(B, 3, H, W)`` float32 in [-1, 1], as the pipeline's image processor makes them."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


# ---------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitReport:
    """What fitting did: steps, final training losses, and the latent statistics written into ``bn``."""

    steps: int
    reconstruction_mse: float  # mean over the last 10% of steps, pixels in [-1, 1]
    kl: float
    latent_mean: torch.Tensor  # per patchified channel, before normalisation
    latent_var: torch.Tensor


def fit_vae(
    vae: AutoencoderKLFlux2,
    *,
    seed: int = 0,
    steps: int = FIT_STEPS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    kl_weight: float = KL_WEIGHT,
    progress: bool = False,
) -> FitReport:
    """Train ``vae`` in place (float32, on its device) on fresh synthetic batches, then refresh its ``bn``.

    Two phases. Warm start (the first ``WARM_FRACTION`` of the steps): the encoder learns to put each
    8×8 cell's mean colour into latent channels 0–2 (the rest 0) and, separately, the decoder learns to
    paint the picture from exactly those latents. Neither waits for the other, which is what makes a minute
    enough: trained jointly from random init, this VAE is still worse than a flat mean-colour guess after
    800 steps. Then the usual end-to-end VAE objective: MSE on a posterior sample plus a small KL term.
    Adam; warm-up, flat, linear decay. Deterministic for a ``seed`` on one machine and thread count; the
    caller's torch RNG is not touched.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if vae.config.latent_channels < 3:
        raise ValueError("the warm start needs at least 3 latent channels (one per colour)")
    device = next(vae.parameters()).device
    rng = np.random.default_rng([seed, 1])
    generator = torch.Generator(device=device).manual_seed(seed)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps))
    warm = int(steps * WARM_FRACTION)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    tail = max(1, steps // 10)
    mse_tail: list[float] = []
    kl_tail: list[float] = []
    vae.train()
    bar = tqdm(range(steps), desc="fitting the tiny VAE", unit="step", disable=not progress)
    for step in bar:
        images = [synthetic_images(1, int(s))[0] for s in rng.integers(0, 2**31, batch_size)]
        pixels = to_pixels(images).to(device)
        posterior = vae.encode(pixels).latent_dist
        if step < warm:
            target = _colour_latents(pixels, factor, vae.config.latent_channels)
            mse = F.mse_loss(vae.decode(target).sample, pixels)
            loss = mse + F.mse_loss(posterior.mode(), target)
        else:
            latents = posterior.sample(generator=generator)
            mse = F.mse_loss(vae.decode(latents).sample, pixels)
            kl = posterior.kl().mean() / latents[0].numel()  # per latent element
            loss = mse + kl_weight * kl
            if step >= steps - tail:
                mse_tail.append(mse.item())
                kl_tail.append(kl.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(phase="warm" if step < warm else "vae", mse=f"{mse.item():.4f}")
    bar.close()
    vae.eval()
    mean, var = refresh_latent_stats(vae, synthetic_images(STATS_IMAGES, seed))
    return FitReport(
        steps=steps,
        reconstruction_mse=float(np.mean(mse_tail)) if mse_tail else float("nan"),
        kl=float(np.mean(kl_tail)) if kl_tail else float("nan"),
        latent_mean=mean,
        latent_var=var,
    )


def _colour_latents(pixels: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """The warm start's latent target: each ``factor``² cell's mean colour in channels 0–2, zeros after."""
    cells = F.avg_pool2d(pixels, factor)
    return torch.cat([cells, cells.new_zeros(cells.shape[0], channels - 3, *cells.shape[2:])], dim=1)


def _schedule(steps: int) -> Callable[[int], float]:
    """Learning-rate factor: 5 % linear warm-up, flat (the end-to-end phase must recover from the switch
    quickly), then a linear decay to 10 % over the last 30 % of the steps."""
    warmup, decay = max(1, steps // 20), int(steps * 0.7)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay:
            return 1.0
        return 1.0 - 0.9 * (step - decay) / max(1, steps - decay)

    return factor


@torch.no_grad()
def refresh_latent_stats(
    vae: AutoencoderKLFlux2, images: list[PIL.Image.Image], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``vae.bn``'s running mean/var to those of ``images``' latents as the pipeline normalises them.

    ``Flux2KleinPipeline._encode_vae_image`` takes the posterior mode, patchifies 2×2 (C → 4C channels) and
    normalises each of the 4C channels with ``bn``; the statistics are measured on exactly that tensor.
    """
    device = next(vae.parameters()).device
    latents = []
    for start in range(0, len(images), batch_size):
        pixels = to_pixels(images[start : start + batch_size]).to(device)
        mode = vae.encode(pixels).latent_dist.mode()
        latents.append(Flux2KleinPipeline._patchify_latents(mode))
    flat = torch.cat(latents).transpose(0, 1).flatten(1).double()  # (4C, B·H·W)
    mean, var = flat.mean(dim=1), flat.var(dim=1, unbiased=False)
    vae.bn.running_mean.copy_(mean.to(vae.bn.running_mean))
    vae.bn.running_var.copy_(var.to(vae.bn.running_var))
    return mean.float().cpu(), var.float().cpu()
