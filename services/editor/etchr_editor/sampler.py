"""The project's batched sampler: many different edit requests through one denoising loop.

diffusers' ``Flux2KleinPipeline.__call__`` repeats ONE set of reference images for every prompt of a batch,
so it cannot serve different requests together. This sampler is built from the pipeline's own components
and mirrors ``__call__`` step for step (prompt encoding, VAE encoding with the bn normalisation, packing,
position ids, the empirical-mu schedule, CFG, the Euler step, unpacking and decoding), but every row of the
batch has its own reference image, prompt, guidance scale and seed. Cond and uncond share one transformer
forward, the empty-prompt embedding is computed once per sampler, and each row's starting noise comes from
its own CPU generator, so a row's output depends neither on the device nor on the rows it shares a batch
with (beyond float rounding).

The loop is split into small methods (``conditioning``, ``initial_latents``, ``schedule``, ``velocity``,
``decode``) because the RL trainer builds its stochastic (SDE) step with log-probs on the same pieces:
there is one sampler in the project.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

MIN_SIDE = 64  # the pipeline's image processor rejects smaller reference images

# Called from the sampling thread after every denoising step with each request's steps done (0..steps; a
# request whose rows span several chunks advances by its share of rows). It must be cheap and not block.
StepCallback = Callable[[list[int]], None]


@dataclass(frozen=True)
class SampleRequest:
    """One edit: a reference image, its prompt, and one rollout (output image) per seed."""

    image: PIL.Image.Image  # RGB; width and height multiples of 16, both >= 64 (the caller fitted it)
    prompt: str
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float

    def batch_key(self) -> tuple[int, int, int, bool]:
        """Requests with equal keys can share one denoising loop (same token count, schedule and CFG mode)."""
        width, height = self.image.size
        return (width, height, self.steps, self.guidance_scale > 1)


@dataclass
class Conditioning:
    """Everything the transformer sees besides the noisy latents, one row per output image."""

    prompt_embeds: torch.Tensor  # (B, L, D)
    text_ids: torch.Tensor  # (B, L, 4)
    negative_embeds: torch.Tensor | None  # (B, L, D); None without CFG
    negative_text_ids: torch.Tensor | None
    image_latents: torch.Tensor  # (B, N_ref, C) packed, bn-normalised reference latents
    image_ids: torch.Tensor  # (B, N_ref, 4)
    latent_ids: torch.Tensor  # (B, N, 4) position ids of the tokens being denoised
    guidance: torch.Tensor | None  # (B, 1, 1) float32 per-row guidance scale; None without CFG
    width: int
    height: int

    @property
    def rows(self) -> int:
        return self.prompt_embeds.shape[0]


@dataclass
class EncodedRequests:
    """A batch's requests with their prompts and reference images encoded (rows index into these)."""

    requests: list[SampleRequest]
    prompts: list[str]  # distinct prompts, in first-seen order
    embeds: torch.Tensor  # (P, L, D)
    text_ids: torch.Tensor  # (P, L, 4)
    image_latents: torch.Tensor  # (R, N_ref, C), one per request
    image_ids: torch.Tensor  # (R, N_ref, 4)


class BatchedSampler:
    """Denoise several requests (each with its own image, prompt, guidance and seeds) in one loop."""

    def __init__(
        self, pipe: Flux2KleinPipeline, *, max_rows: int = 8, device: torch.device | None = None
    ) -> None:
        """``device``: where the DiT runs; by default the pipeline's. Trainers name it, because they may
        park the frozen text encoder on the CPU, which would change what the pipeline reports."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.pipe = pipe
        self.max_rows = max_rows
        self._device = device
        self.multiple = pipe.vae_scale_factor * 2  # pixels per latent token side: VAE factor × 2×2 patches
        self._negative: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ public entry points

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else self.pipe._execution_device

    @torch.inference_mode()
    def sample(
        self, requests: Sequence[SampleRequest], *, on_step: StepCallback | None = None
    ) -> list[list[PIL.Image.Image]]:
        """Per request, one image per seed, each the size of the request's image.

        All requests must share ``batch_key``; rows (request × seed) run in chunks of ``max_rows``.
        ``on_step`` hears every request's progress after each step (see ``StepCallback``); it reads no
        tensor, so it adds no GPU sync: steps are counted as the host queues them.
        """
        if not requests:
            return []
        self.validate(requests)
        encoded = self.encode_requests(requests)
        rows = [(index, seed) for index, request in enumerate(requests) for seed in request.seeds]
        outputs: list[list[PIL.Image.Image]] = [[] for _ in requests]
        steps = requests[0].steps
        row_steps = [0] * len(requests)  # denoising steps done, summed over each request's rows
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start : start + self.max_rows]
            cond = self.rows_conditioning(encoded, chunk)
            latents = self.initial_latents([seed for _, seed in chunk], cond.width, cond.height)
            hook = None if on_step is None else _progress_hook(requests, chunk, row_steps, on_step)
            latents = self.denoise(cond, latents, steps, on_step=hook)
            for (i, _), image in zip(chunk, self.decode(latents, cond.width, cond.height), strict=True):
                outputs[i].append(image)
        return outputs

    @torch.inference_mode()
    def warmup(
        self, size: tuple[int, int] = (64, 64), *, requests: int = 1, guidance_scale: float = 2.0
    ) -> None:
        """One 1-step edit of ``requests`` requests, so real ones do not pay for lazy init (kernels,
        compile). ``guidance_scale`` ≤ 1 runs it without CFG, a batch shape of its own."""
        image = PIL.Image.new("RGB", size, (127, 127, 127))
        warm = [SampleRequest(image, "warm-up", (i,), 1, guidance_scale) for i in range(requests)]
        self.sample(warm)

    # ------------------------------------------------------------------ the pieces of the loop

    def encode_requests(self, requests: Sequence[SampleRequest]) -> EncodedRequests:
        """Prompts (each distinct one once) and reference images of a batch, encoded in one call each."""
        prompts = list(dict.fromkeys(r.prompt for r in requests))
        embeds, text_ids = self.encode_prompts(prompts)
        image_latents, image_ids = self.encode_reference_images([r.image for r in requests])
        return EncodedRequests(list(requests), prompts, embeds, text_ids, image_latents, image_ids)

    def rows_conditioning(self, encoded: EncodedRequests, rows: Sequence[tuple[int, int]]) -> Conditioning:
        """Conditioning for ``rows`` of (request index, seed): one row per output image."""
        row_requests = [encoded.requests[i] for i, _ in rows]
        prompt_rows = [encoded.prompts.index(r.prompt) for r in row_requests]
        prompt_index = torch.tensor(prompt_rows, device=self.device)
        image_index = torch.tensor([i for i, _ in rows], device=self.device)
        return self.conditioning(
            row_requests,
            prompt_embeds=encoded.embeds[prompt_index],
            text_ids=encoded.text_ids[prompt_index],
            image_latents=encoded.image_latents[image_index],
            image_ids=encoded.image_ids[image_index],
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """All prompts in one text-encoder call: ``(embeds (B, 512, D), text_ids (B, 512, 4))``."""
        return self.pipe.encode_prompt(prompt=list(prompts), device=self.device)

    def negative_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty-prompt ("") embedding CFG uses; identical for every request, so computed once.

        Made outside inference mode even when first needed inside ``sample``: the RL trainer reuses it in
        forwards that build a graph, and inference tensors cannot take part in those.
        """
        if self._negative is None:
            with torch.inference_mode(False), torch.no_grad():
                self._negative = self.encode_prompts([""])
        return self._negative

    @torch.no_grad()
    def encode_reference_images(self, images: Sequence[PIL.Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same-size reference images in one VAE call: ``(packed bn-normalised latents (B, N, C), ids)``."""
        pipe = self.pipe
        width, height = images[0].size
        pixels = torch.cat(
            [
                pipe.image_processor.preprocess(_rgb(image), height=height, width=width, resize_mode="crop")
                for image in images
            ]
        )
        vae_device = next(pipe.vae.parameters()).device
        latents = pipe._encode_vae_image(pixels.to(device=vae_device, dtype=pipe.vae.dtype), generator=None)
        ids = pipe._prepare_image_ids([latents[:1]]).to(self.device)  # one reference image: T = 10
        packed = pipe._pack_latents(latents).to(self.device)
        return packed, ids.expand(packed.shape[0], -1, -1)

    def conditioning(
        self,
        requests: Sequence[SampleRequest],
        *,
        prompt_embeds: torch.Tensor,
        text_ids: torch.Tensor,
        image_latents: torch.Tensor,
        image_ids: torch.Tensor,
    ) -> Conditioning:
        """One row per entry of ``requests`` (a request repeated once per rollout), from encoded inputs."""
        width, height = requests[0].image.size
        rows = len(requests)
        cfg = requests[0].guidance_scale > 1 and not self.pipe.config.is_distilled
        negative_embeds = negative_text_ids = guidance = None
        if cfg:
            negative, negative_ids = self.negative_embedding()
            negative_embeds = negative.expand(rows, -1, -1)
            negative_text_ids = negative_ids.expand(rows, -1, -1)
            guidance = torch.tensor(
                [r.guidance_scale for r in requests], dtype=torch.float32, device=self.device
            ).view(rows, 1, 1)
        latent_ids = self._latent_ids(rows, width, height)
        return Conditioning(
            prompt_embeds=prompt_embeds,
            text_ids=text_ids,
            negative_embeds=negative_embeds,
            negative_text_ids=negative_text_ids,
            image_latents=image_latents,
            image_ids=image_ids,
            latent_ids=latent_ids.to(self.device),
            guidance=guidance,
            width=width,
            height=height,
        )

    def initial_latents(self, seeds: Sequence[int], width: int, height: int) -> torch.Tensor:
        """Packed start noise ``(B, N, C)``; each row from its own CPU generator, as the pipeline draws it."""
        shape = (1, self.pipe.transformer.config.in_channels, *self._tokens(width, height))
        dtype = self.pipe.text_encoder.dtype  # the pipeline draws noise in the prompt embeddings' dtype
        noise = [
            randn_tensor(
                shape, generator=torch.Generator("cpu").manual_seed(seed), device=self.device, dtype=dtype
            )
            for seed in seeds
        ]
        return self.pipe._pack_latents(torch.cat(noise))

    def schedule(
        self, steps: int, width: int, height: int
    ) -> tuple[FlowMatchEulerDiscreteScheduler, torch.Tensor]:
        """A fresh scheduler set up as ``__call__`` does, and its timesteps; the pipeline's is untouched."""
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        sigmas: np.ndarray | None = np.linspace(1.0, 1 / steps, steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        tokens_h, tokens_w = self._tokens(width, height)
        image_seq_len = tokens_h * tokens_w
        mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=steps)
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        return scheduler, timesteps

    def velocity(
        self,
        cond: Conditioning,
        latents: torch.Tensor,
        t: torch.Tensor,
        *,
        transformer: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """The CFG-combined model prediction for ``latents`` at ``t``; cond and uncond share ONE forward.

        ``t`` is one timestep or one per row (0–1000). ``transformer`` replaces the pipeline's DiT in the
        call, for trainers whose DiT is wrapped (DDP, autocast) around the very same module.
        """
        dtype = self.pipe.transformer.dtype
        transformer = transformer if transformer is not None else self.pipe.transformer
        rows, tokens = latents.shape[0], latents.shape[1]
        hidden = torch.cat([latents, cond.image_latents.to(latents.dtype)], dim=1).to(dtype)
        ids = torch.cat([cond.latent_ids, cond.image_ids], dim=1)
        timestep = t.expand(rows).to(latents.dtype) / 1000
        embeds, text_ids = cond.prompt_embeds, cond.text_ids
        if cond.guidance is not None:
            assert cond.negative_embeds is not None and cond.negative_text_ids is not None
            hidden = torch.cat([hidden, hidden])
            ids = torch.cat([ids, ids])
            timestep = torch.cat([timestep, timestep])
            embeds = torch.cat([embeds, cond.negative_embeds])
            text_ids = torch.cat([text_ids, cond.negative_text_ids])
        prediction = transformer(
            hidden_states=hidden,
            timestep=timestep,
            guidance=None,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=ids,
            return_dict=False,
        )[0][:, :tokens]
        if cond.guidance is None:
            return prediction
        positive, negative = prediction[:rows], prediction[rows:]
        combined = negative.float() + cond.guidance * (positive.float() - negative.float())
        return combined.to(prediction.dtype)

    def denoise(
        self,
        cond: Conditioning,
        latents: torch.Tensor,
        steps: int,
        *,
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """The deterministic Euler (ODE) loop of the pipeline; ``on_step(i)`` after step i (1..steps)."""
        scheduler, timesteps = self.schedule(steps, cond.width, cond.height)
        for i, t in enumerate(timesteps, start=1):
            latents = scheduler.step(self.velocity(cond, latents, t), t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, width: int, height: int) -> list[PIL.Image.Image]:
        """Packed latents → PIL images: unpack, bn-denormalise, unpatchify, VAE decode, postprocess."""
        pipe = self.pipe
        tokens_h, tokens_w = self._tokens(width, height)
        latent_ids = self._latent_ids(latents.shape[0], width, height).to(latents.device)
        latents = pipe._unpack_latents_with_ids(latents, latent_ids, tokens_h, tokens_w)
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(
            latents.device, latents.dtype
        )
        latents = pipe._unpatchify_latents(latents * std + mean)
        vae_device = next(pipe.vae.parameters()).device
        pixels = pipe.vae.decode(latents.to(vae_device), return_dict=False)[0]
        return pipe.image_processor.postprocess(pixels, output_type="pil")

    # ------------------------------------------------------------------ helpers

    def _tokens(self, width: int, height: int) -> tuple[int, int]:
        """Latent token grid (rows, columns) of an image: one token per ``multiple``² pixels."""
        return height // self.multiple, width // self.multiple

    def _latent_ids(self, rows: int, width: int, height: int) -> torch.Tensor:
        """The pipeline's (T, H, W, L) position ids of the denoised tokens; only the shape matters to it."""
        return self.pipe._prepare_latent_ids(
            torch.empty(rows, 1, *self._tokens(width, height), device="meta")
        )

    def validate(self, requests: Sequence[SampleRequest]) -> None:
        """Requests that can share one loop: same batch_key, model-ready sizes, steps and seeds."""
        key = requests[0].batch_key()
        for request in requests:
            if request.batch_key() != key:
                raise ValueError(
                    f"requests of one batch must share batch_key (width, height, steps, cfg): "
                    f"{request.batch_key()} != {key}"
                )
            width, height = request.image.size
            if width % self.multiple or height % self.multiple or min(width, height) < MIN_SIDE:
                raise ValueError(
                    f"image size {width}x{height}: sides must be multiples of {self.multiple}, >= {MIN_SIDE}"
                )
            if request.steps < 1:
                raise ValueError(f"steps must be >= 1, got {request.steps}")
            if not request.seeds:
                raise ValueError("a request needs at least one seed")


def _progress_hook(
    requests: Sequence[SampleRequest],
    chunk: Sequence[tuple[int, int]],
    row_steps: list[int],
    on_step: StepCallback,
) -> Callable[[int], None]:
    """The per-step hook of one chunk: adds the chunk's rows to each request's count (``row_steps``, shared
    across chunks) and reports whole steps per request, so a request split over chunks ends at ``steps``."""
    chunk_rows = [sum(1 for i, _ in chunk if i == index) for index in range(len(requests))]
    seeds = [len(request.seeds) for request in requests]

    def hook(_step: int) -> None:
        for index, count in enumerate(chunk_rows):
            row_steps[index] += count
        on_step([done // n for done, n in zip(row_steps, seeds, strict=True)])

    return hook


def _rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
