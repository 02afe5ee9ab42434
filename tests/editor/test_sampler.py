"""The batched sampler on the tiny checkpoint: sizes, determinism, batch independence, diffusers parity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import PIL.Image
import pytest
import torch

from etchr_editor.model import LoadedEditor
from etchr_editor.sampler import BatchedSampler, SampleRequest

# Pixel tolerance (uint8) for "the same computation, batched differently": batched matmuls may round
# differently from unbatched ones; on the tiny float32 model that never moves a pixel by more than 1.
PIXEL_TOL = 2


def noise_image(width: int, height: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a: PIL.Image.Image, b: PIL.Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def request(
    image: PIL.Image.Image,
    prompt: str = "draw a red box around the cup",
    seeds: Sequence[int] = (0,),
    steps: int = 2,
    guidance: float = 3.5,
) -> SampleRequest:
    return SampleRequest(image=image, prompt=prompt, seeds=tuple(seeds), steps=steps, guidance_scale=guidance)


@pytest.fixture(scope="module")
def sampler(tiny_editor: LoadedEditor) -> BatchedSampler:
    return BatchedSampler(tiny_editor.pipe, max_rows=8)


@contextmanager
def forward_batches(module: torch.nn.Module) -> Iterator[list[int]]:
    """Record the batch size of every forward of ``module`` (a real hook, the model still runs)."""
    sizes: list[int] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tensor = kwargs.get("hidden_states", kwargs.get("input_ids", args[0] if args else None))
        sizes.append(int(tensor.shape[0]))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


@pytest.mark.parametrize(("width", "height"), [(64, 96), (96, 64), (64, 64)])
def test_output_size_equals_input_size(sampler: BatchedSampler, width: int, height: int) -> None:
    [[image]] = sampler.sample([request(noise_image(width, height, 1), steps=1)])
    assert image.size == (width, height)
    assert image.mode == "RGB"


def test_same_request_and_seed_is_bit_identical(sampler: BatchedSampler) -> None:
    req = request(noise_image(64, 96, 2), seeds=(11,))
    first = sampler.sample([req])[0][0]
    second = sampler.sample([req])[0][0]
    assert np.array_equal(pixels(first), pixels(second))


def test_different_seeds_give_different_images(sampler: BatchedSampler) -> None:
    a, b = sampler.sample([request(noise_image(64, 64, 3), seeds=(1, 2))])[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 5


def test_initial_noise_per_row_does_not_depend_on_batch(sampler: BatchedSampler) -> None:
    together = sampler.initial_latents([5, 9], 64, 96)
    assert torch.equal(together[0], sampler.initial_latents([5], 64, 96)[0])
    assert torch.equal(together[1], sampler.initial_latents([9], 64, 96)[0])


def test_mixed_batch_equals_each_request_alone(sampler: BatchedSampler) -> None:
    """Three different requests (image, prompt, guidance, seeds) in one loop ≈ each run alone."""
    image_a, image_b = noise_image(64, 96, 4), PIL.Image.new("RGB", (64, 96), (255, 0, 0))
    req_a = request(image_a, "draw a red box around the cup", seeds=(5,), guidance=3.5)
    req_b = request(image_b, "draw a red box around the cup", seeds=(5,), guidance=3.5)  # differs by image
    req_c = request(image_a, "where is the key? restore the jigsaw", seeds=(5, 9), guidance=6.0)
    alone = [sampler.sample([req])[0] for req in (req_a, req_b, req_c)]
    mixed = sampler.sample([req_c, req_a, req_b])
    for expected, got in zip(alone, [mixed[1], mixed[2], mixed[0]], strict=True):
        assert len(got) == len(expected)
        for e, g in zip(expected, got, strict=True):
            assert max_diff(e, g) <= PIXEL_TOL
    # Each row really got its own image and its own prompt/guidance, so a mix-up would have shown above.
    assert max_diff(alone[0][0], alone[1][0]) > 2 * PIXEL_TOL
    assert max_diff(alone[0][0], alone[2][0]) > 2 * PIXEL_TOL


@pytest.mark.parametrize("guidance", [3.5, 1.0])
def test_matches_diffusers_pipeline(
    tiny_editor: LoadedEditor, sampler: BatchedSampler, guidance: float
) -> None:
    """The sampler mirrors ``Flux2KleinPipeline.__call__``: same seed → the same image."""
    image, prompt, seed, steps = noise_image(64, 96, 6), "mark the tallest bar", 21, 3
    ours = sampler.sample([request(image, prompt, seeds=(seed,), steps=steps, guidance=guidance)])[0][0]
    theirs = tiny_editor.pipe(
        image=image,
        prompt=prompt,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=steps,
        guidance_scale=guidance,
    ).images[0]
    assert theirs.size == ours.size
    assert max_diff(ours, theirs) <= 1


def test_pipeline_scheduler_is_left_untouched(tiny_editor: LoadedEditor, sampler: BatchedSampler) -> None:
    scheduler = tiny_editor.pipe.scheduler
    before = (scheduler.num_inference_steps, scheduler.step_index, scheduler.begin_index)
    sampler.sample([request(noise_image(64, 64, 7), steps=3)])
    assert (scheduler.num_inference_steps, scheduler.step_index, scheduler.begin_index) == before


def test_mismatched_batch_keys_raise(sampler: BatchedSampler) -> None:
    base = request(noise_image(64, 64, 8), steps=2, guidance=3.5)
    others = [
        request(noise_image(64, 96, 8), steps=2, guidance=3.5),  # size
        request(noise_image(64, 64, 8), steps=3, guidance=3.5),  # steps
        request(noise_image(64, 64, 8), steps=2, guidance=1.0),  # CFG on vs off
    ]
    for other in others:
        with pytest.raises(ValueError, match="batch_key"):
            sampler.sample([base, other])
    # Different guidance values with CFG on both share a loop.
    assert base.batch_key() == request(noise_image(64, 64, 9), steps=2, guidance=7.0).batch_key()


@pytest.mark.parametrize(
    ("size", "seeds"),
    [((72, 64), (0,)), ((48, 64), (0,)), ((64, 64), ())],
)
def test_invalid_requests_raise(
    sampler: BatchedSampler, size: tuple[int, int], seeds: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        sampler.sample([request(noise_image(*size, 0), seeds=seeds)])


def test_empty_batch(sampler: BatchedSampler) -> None:
    assert sampler.sample([]) == []


def test_cfg_shares_one_forward_and_no_cfg_runs_one(
    tiny_editor: LoadedEditor, sampler: BatchedSampler
) -> None:
    image = noise_image(64, 64, 10)
    with forward_batches(tiny_editor.pipe.transformer) as sizes:
        sampler.sample([request(image, seeds=(1, 2), steps=3, guidance=4.0)])
    assert sizes == [4, 4, 4]  # 2 rows × (cond + uncond), one forward per step
    with forward_batches(tiny_editor.pipe.transformer) as sizes:
        [[plain]] = sampler.sample([request(image, seeds=(1,), steps=3, guidance=1.0)])
    assert sizes == [1, 1, 1]
    [[guided]] = sampler.sample([request(image, seeds=(1,), steps=3, guidance=4.0)])
    assert max_diff(plain, guided) > 0


def test_encoders_run_once_per_batch(tiny_editor: LoadedEditor) -> None:
    """Prompts in one text-encoder call, images in one VAE call, the "" embedding once per sampler."""
    sampler = BatchedSampler(tiny_editor.pipe)
    requests = [request(noise_image(64, 64, 20 + i), prompt=f"question {i}", seeds=(i,)) for i in range(3)]
    with (
        forward_batches(tiny_editor.pipe.text_encoder) as text_calls,
        forward_batches(tiny_editor.pipe.vae.encoder) as vae_calls,
    ):
        sampler.sample(requests)
        sampler.sample(requests)
    assert text_calls == [3, 1, 3]  # prompts, then "" once, then prompts again (the "" embedding is reused)
    assert vae_calls == [3, 3]


def test_cached_negative_embedding_is_not_an_inference_tensor(tiny_editor: LoadedEditor) -> None:
    """The RL trainer reuses it in grad-enabled forwards, where inference tensors are refused."""
    sampler = BatchedSampler(tiny_editor.pipe)
    sampler.sample([request(noise_image(64, 64, 40), steps=1)])
    embeds, text_ids = sampler.negative_embedding()
    assert not embeds.is_inference()
    assert not text_ids.is_inference()
    assert embeds.shape[0] == 1


def test_max_rows_chunking_gives_the_same_images(tiny_editor: LoadedEditor, sampler: BatchedSampler) -> None:
    requests = [
        request(noise_image(64, 64, 30), "first", seeds=(1, 2, 3), guidance=2.0),
        request(noise_image(64, 64, 31), "second", seeds=(4, 5), guidance=5.0),
    ]
    chunked = BatchedSampler(tiny_editor.pipe, max_rows=2)
    with forward_batches(tiny_editor.pipe.transformer) as sizes:
        small = chunked.sample(requests)
    assert sizes == [4, 4, 4, 4, 2, 2]  # chunks of 2, 2, 1 rows × 2 steps, cond+uncond batched
    whole = sampler.sample(requests)
    assert [len(images) for images in small] == [3, 2]
    for images_small, images_whole in zip(small, whole, strict=True):
        for a, b in zip(images_small, images_whole, strict=True):
            assert max_diff(a, b) <= PIXEL_TOL


def test_warmup_runs(sampler: BatchedSampler) -> None:
    sampler.warmup()
    sampler.warmup(size=(96, 64))


def test_max_rows_must_be_positive(tiny_editor: LoadedEditor) -> None:
    with pytest.raises(ValueError):
        BatchedSampler(tiny_editor.pipe, max_rows=0)
