"""GPU benchmark at FLUX.2-klein-9B size with RANDOM weights (no downloads): served edit vs transformer limit.

Builds a Flux2KleinPipeline whose transformer has the real 9B shape (8 double + 24 single blocks, 32 heads ×
128, joint_attention_dim 12288, in_channels 128) and whose VAE has the real configuration, all randomly
initialised directly on the GPU in bf16. Text encoding is < 1 % of an edit, so by default the text encoder
is a SMALL Qwen3 with the real hidden size 4096 (the DiT needs 3 × 4096 context channels) but few narrow
layers; ``--text-encoder qwen3-8b`` builds the full Qwen3-8B shape instead (≈16 GB more memory).

It measures, at each ``--sizes`` side with one reference image of the same size:
  (a) one raw transformer forward (batch 1, and batch 2 = cond+uncond as the sampler runs it), eager and
      with ``compile_repeated_blocks(fullgraph=True)``; "transformer limit" per edit = 2 (CFG) × steps ×
      the batch-1 forward: what an edit costs if everything but the DiT were free;
  (b) the BatchedSampler's seconds per ``--steps``-step CFG edit, alone and in batches of distinct requests;
  (c) one edit SERVED: ``POST /edit`` over real HTTP to the editor app (uvicorn in a thread) whose in-process
      worker serves this same pipeline object through a throwaway redis-server (needs ``redis-server``);
and prints sampler/limit and served/limit ratios, and the serving cost per edit (served − sampler, fixed
per edit: HTTP, base64, PNG, Redis), from which served/limit at other step counts follows.

    python bench/gpu_editor.py                       # on a GPU: 512² and 1024², 40 steps, eager + compiled
    python bench/gpu_editor.py --quick               # smoke run: tiny pipeline, 64², CPU, 2 steps
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from PIL import Image
from transformers import Qwen3Config, Qwen3ForCausalLM

from etchr.settings import EditorSettings
from etchr_editor.model import LoadedEditor, resolve_device, resolve_dtype
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.service import create_app
from etchr_editor.tiny import SCHEDULER_CONFIG, build_tiny_pipeline, build_tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread

# diffusers' conversion config for FLUX.2-klein-9B (scripts/convert_flux2_to_diffusers.py, "klein-9b").
KLEIN_9B_TRANSFORMER: dict[str, object] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 8,
    "num_single_layers": 24,
    "attention_head_dim": 128,
    "num_attention_heads": 32,
    "joint_attention_dim": 12288,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

# Qwen3-8B's shape (hidden 4096 × 36 layers); the pipeline stacks hidden states of layers 9, 18 and 27.
QWEN3_8B: dict[str, object] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
}
# Small stand-in: the real output width (4096) and enough layers for index 27, everything else narrow.
QWEN3_SMALL: dict[str, object] = {
    **QWEN3_8B,
    "vocab_size": 1024,  # the tokenizer here is the tiny one (384 ids)
    "intermediate_size": 256,
    "num_hidden_layers": 28,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny pipeline, 64², CPU, 2 steps")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    parser.add_argument("--sizes", default=None, help="comma-separated square sides (default 512,1024)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per edit (default 40)")
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument(
        "--batches", default=None, help="sampler batch sizes of distinct requests (default 1,4)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument(
        "--text-encoder", choices=("small", "qwen3-8b"), default="small", help="text encoder size (see above)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure with compile_repeated_blocks (default: on, off with --quick)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.device = args.device or ("cpu" if quick else "cuda")
    args.sizes = [int(s) for s in (args.sizes or ("64" if quick else "512,1024")).split(",")]
    args.steps = args.steps or (2 if quick else 40)
    args.batches = [int(b) for b in (args.batches or ("1,2" if quick else "1,4")).split(",")]
    args.repeats = args.repeats or (1 if quick else 3)
    args.compile = (not quick) if args.compile is None else args.compile
    return args


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (a 9B model in fp32 first would need twice the memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_klein_9b(device: torch.device, dtype: torch.dtype, text_encoder: str) -> Flux2KleinPipeline:
    """The 9B-shaped pipeline with random weights, initialised on ``device`` (fast on a GPU)."""
    tokenizer = build_tiny_tokenizer()  # token ids < its vocab; the sequence is padded to 512 as in serving
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        transformer = Flux2Transformer2DModel(**KLEIN_9B_TRANSFORMER)
        vae = AutoencoderKLFlux2()  # the real configuration
        config = QWEN3_8B if text_encoder == "qwen3-8b" else QWEN3_SMALL
        encoder = Qwen3ForCausalLM(
            Qwen3Config(**config, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        )
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        vae=vae.eval(),
        text_encoder=encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )
    # Already on ``device`` in ``dtype``; no ``pipe.to(dtype)``, which would also cast fp32 buffers (RoPE).
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def transformer_forward(pipe: Flux2KleinPipeline, side: int, batch: int) -> Callable[[], object]:
    """One DiT forward as the sampler makes it: noise tokens + one reference image + 512 text tokens."""
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    config = pipe.transformer.config
    grid = side // (pipe.vae_scale_factor * 2)
    noise = torch.randn(batch, config.in_channels, grid, grid, device=device, dtype=dtype)
    latent_ids = pipe._prepare_latent_ids(noise).to(device)
    image_ids = pipe._prepare_image_ids([noise[:1]]).to(device).expand(batch, -1, -1)
    packed = pipe._pack_latents(noise)
    hidden = torch.cat([packed, packed], dim=1)
    ids = torch.cat([latent_ids, image_ids], dim=1)
    text = torch.randn(batch, 512, config.joint_attention_dim, device=device, dtype=dtype)
    text_ids = pipe._prepare_text_ids(text).to(device)
    timestep = torch.full((batch,), 0.5, device=device, dtype=dtype)

    def run() -> object:
        with torch.inference_mode():
            return pipe.transformer(
                hidden_states=hidden,
                timestep=timestep,
                guidance=None,
                encoder_hidden_states=text,
                txt_ids=text_ids,
                img_ids=ids,
                return_dict=False,
            )

    return run


def requests_for(count: int, side: int, steps: int, guidance: float) -> list[SampleRequest]:
    rng = np.random.default_rng(0)
    return [
        SampleRequest(
            image=Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)),
            prompt=f"Question {i}: which object is left of the red cube? Draw a red box around it.",
            seeds=(i,),
            steps=steps,
            guidance_scale=guidance + 0.5 * i,
        )
        for i in range(count)
    ]


@contextmanager
def served_editor(pipe: Flux2KleinPipeline, device: torch.device) -> Iterator[httpx.Client]:
    """The editor app over real HTTP, its in-process worker serving ``pipe``, one job per batch."""
    redis_server = RedisServer().start()
    settings = EditorSettings(
        redis_url=redis_server.url,
        editor_max_batch=1,
        editor_batch_wait_ms=0,
        editor_deadline_s=3600,
        max_body_bytes=256 * 1024 * 1024,
        log_level="WARNING",
    )
    info: dict[str, object] = {"name": "random FLUX.2-klein-9B shape", "device": str(device)}
    editor = LoadedEditor(pipe=pipe, device=device, dtype=pipe.transformer.dtype, info=info)
    server = UvicornThread(create_app(settings, editor=editor)).start(timeout=600)
    try:
        with httpx.Client(base_url=server.url, timeout=3600) as client:
            yield client
    finally:
        server.stop()
        redis_server.stop()


def served_edit(client: httpx.Client, request: SampleRequest) -> Callable[[], object]:
    """``POST /edit`` of the request's image (PNG) at its size, steps and guidance."""
    buffer = io.BytesIO()
    request.image.save(buffer, format="PNG")
    body = {
        "image": base64.b64encode(buffer.getvalue()).decode(),
        "question": "Which object is left of the red cube?",
        "task": "perception",
        "seed": request.seeds[0],
        "steps": request.steps,
        "guidance_scale": request.guidance_scale,
    }

    def run() -> object:
        response = client.post("/edit", json=body)
        response.raise_for_status()
        return response

    return run


def measure(
    pipe: Flux2KleinPipeline, args: argparse.Namespace, device: torch.device, mode: str, client: httpx.Client
) -> None:
    sampler = BatchedSampler(pipe, max_rows=max(args.batches))
    for side in args.sizes:
        tokens = (side // 16) ** 2
        forward_1 = median_seconds(transformer_forward(pipe, side, 1), device, max(args.repeats, 3))
        forward_2 = median_seconds(transformer_forward(pipe, side, 2), device, max(args.repeats, 3))
        limit = 2 * args.steps * forward_1
        print(
            f"[{mode}] {side}² ({tokens} image tokens + {tokens} reference + 512 text): "
            f"forward b=1 {forward_1 * 1000:.1f} ms, b=2 {forward_2 * 1000:.1f} ms; "
            f"transformer limit per {args.steps}-step CFG edit = {limit:.3f} s"
        )
        per_edit: dict[int, float] = {}  # sampler seconds per edit, by batch size
        for batch in args.batches:
            requests = requests_for(batch, side, args.steps, args.guidance)
            seconds = median_seconds(lambda r=requests: sampler.sample(r), device, args.repeats)
            per_edit[batch] = seconds / batch
            print(
                f"[{mode}] {side}² sampler batch={batch}: {seconds:.3f} s per call, "
                f"{per_edit[batch]:.3f} s per edit, sampler/limit = {per_edit[batch] / limit:.3f}"
            )
        # The sampler runs above warmed this size's kernels (and compiled graphs) up: no warm-up here.
        served = median_seconds(
            served_edit(client, requests_for(1, side, args.steps, args.guidance)[0]), device, args.repeats, 0
        )
        alone = per_edit.get(1)
        cost = "" if alone is None else f", serving cost {(served - alone) * 1000:.0f} ms per edit"
        print(
            f"[{mode}] {side}² served POST /edit: {served:.3f} s per edit, "
            f"served/limit = {served / limit:.3f}{cost}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)  # bf16 on cuda, as served
    started = time.perf_counter()
    if args.quick:
        pipe = build_tiny_pipeline(0).to(device)  # float32, as ``auto`` gives on CPU
        text_encoder = "tiny (quick smoke run)"
    else:
        pipe = build_klein_9b(device, dtype, args.text_encoder)
        shape = "Qwen3-8B shape" if args.text_encoder == "qwen3-8b" else "hidden 4096, 28 narrow layers"
        text_encoder = f"{args.text_encoder} ({shape})"
    params = sum(p.numel() for p in pipe.transformer.parameters())
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
        f"dtype={str(pipe.transformer.dtype).removeprefix('torch.')} transformer={params / 1e9:.2f} B params "
        f"text_encoder={text_encoder} random weights, built in {time.perf_counter() - started:.1f} s; "
        f"steps={args.steps} guidance={args.guidance} sizes={args.sizes} batches={args.batches}"
    )
    with served_editor(pipe, device) as client:
        measure(pipe, args, device, "eager", client)
        if args.compile:
            started = time.perf_counter()
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
            print(
                f"compile_repeated_blocks(fullgraph=True) set up in {time.perf_counter() - started:.1f} s "
                "(lazy)"
            )
            measure(pipe, args, device, "compiled", client)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
