"""A tiny random-init Flux2Klein pipeline (docs/tiny-editor.md).

No weights can be downloaded in development or CI, yet the real loading code (``from_pretrained``, LoRA
loading and fusing, the batched sampler) must be exercised end to end. This module builds a pipeline with
every component of the real FLUX.2-klein architecture at toy sizes: the same classes, the same layout
rules (VAE with four blocks so the scale factor is 8 and sizes are multiples of 16; a 28+ layer Qwen3 so
the pipeline's hidden-state layers (9, 18, 27) exist; ``joint_attention_dim`` = 3 × text hidden size),
and the real scheduler configuration. It draws noise, not pictures, and runs a 64×64 edit in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import transformers
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from etchr_editor.tiny_vae import fit_vae as fit_tiny_vae

# Sizes. Text hidden states of three layers are stacked, so the DiT's context width is 3 × TEXT_HIDDEN.
TEXT_HIDDEN = 16
TEXT_LAYERS = 28  # the pipeline reads hidden_states[27]
LATENT_CHANNELS = 4  # packed 2×2 → the DiT sees 4 × LATENT_CHANNELS channels per token
VOCAB_SIZE = 384
QK_NORM_GAIN = 4.0  # see build_tiny_pipeline

# The scheduler configuration FLUX.2 checkpoints ship (diffusers converts them with FLUX.1-dev's): dynamic
# shifting on, the shift ``mu`` supplied per call by the pipeline's ``compute_empirical_mu``.
SCHEDULER_CONFIG: dict[str, object] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# The Qwen3 chat template reduced to what the pipeline uses: one user turn, the generation prompt, and the
# empty think block Qwen3 emits when ``enable_thinking`` is false.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Qwen2's pre-tokenisation split; the tokenizer wrapper rebuilds it, so training must use the same one.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)

_TRAINING_TEXT = """\
Draw a red box around the object the question asks about. Keep the rest of the image unchanged.
Draw the solution path from the start to the goal on the maze. Restore the shuffled jigsaw patches.
Show the scene from the viewpoint the question needs. Mark the bar of the chart that answers it.
What colour is the cup on the table? How many people are standing near the door? Which way is left?
Is the red ball to the left of the blue cube? What is the value of the tallest bar in 2024?
The quick brown fox jumps over the lazy dog. A small cactus with a happy face in the desert.
Question: where is the key? Answer with the option letter. Options: (A) top (B) bottom (C) left (D) right.
Move up, down, left, right; avoid the holes on the frozen lake and reach the gift.
0 1 2 3 4 5 6 7 8 9 10 100 1000 % $ # @ ! ? , . ; : ' " ( ) [ ] { } < > / \\ | - + = * & ^ ~ `
"""


def build_tiny_tokenizer() -> Qwen2TokenizerFast:
    """A byte-level BPE trained in-process (no download), wrapped as the Qwen2 tokenizer of the pipeline."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT.splitlines(), trainer=trainer)
    vocab: dict[str, int] = tokenizer.get_vocab()
    merges = _merges(tokenizer)
    special = {
        "unk_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "model_max_length": 1024,
    }
    if int(transformers.__version__.split(".")[0]) >= 5:  # v5 rebuilds the backend from vocab + merges
        wrapped = Qwen2TokenizerFast(vocab=vocab, merges=merges, **special)
    else:
        wrapped = Qwen2TokenizerFast(tokenizer_object=tokenizer, **special)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """The trained merges, in rank order (tokenizers exposes them only through its JSON form)."""
    state = json.loads(tokenizer.to_str())
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]


def build_tiny_pipeline(seed: int = 0) -> Flux2KleinPipeline:
    """The tiny pipeline, float32 on CPU; the same ``seed`` gives the same weights."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_HIDDEN,
                intermediate_size=2 * TEXT_HIDDEN,
                num_hidden_layers=TEXT_LAYERS,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=8,
                max_position_embeddings=1024,
                tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        ).eval()
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * TEXT_HIDDEN,
            timestep_guidance_channels=32,
            mlp_ratio=2.0,
            axes_dims_rope=(4, 4, 4, 4),
            rope_theta=2000,
            guidance_embeds=False,
        ).eval()
        # Sharper attention: with near-uniform random attention over 512 text tokens the few reference-image
        # tokens would barely move the output, and tests could not tell whose image a row was given.
        for name, param in transformer.named_parameters():
            if re.search(r"\.norm_(added_)?[qk]\.weight$", name):
                param.data.mul_(QK_NORM_GAIN)
        vae = AutoencoderKLFlux2(
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=LATENT_CHANNELS,
            norm_num_groups=4,
            sample_size=64,
        ).eval()
        # Non-trivial latent statistics, so the pipeline's bn (de)normalisation is exercised, not an identity.
        channels = vae.bn.num_features
        vae.bn.running_mean.copy_(0.1 * torch.randn(channels))
        vae.bn.running_var.copy_(0.02 + 0.05 * torch.rand(channels))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_editor(
    out_dir: Path | str, seed: int = 0, fit_vae: bool = False, *, progress: bool = False
) -> Path:
    """Write the tiny pipeline (``save_pretrained``); ``Flux2KleinPipeline.from_pretrained(dir)`` loads it.

    ``fit_vae``: first fit its VAE on synthetic pictures (``tiny_vae.fit_vae``, ~45 s on 2 CPU cores), so
    different latents decode to visibly different images and image-level rewards on its outputs can move.
    Same architecture and shapes either way; ``progress`` shows the fitting's progress bar.
    """
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed)
    if fit_vae:
        fit_tiny_vae(pipe.vae, seed=seed, progress=progress)
    pipe.save_pretrained(path)
    _readable_as_umask_allows(path)
    return path


def _readable_as_umask_allows(path: Path) -> None:
    """Give the weight files the mode the umask allows (usually 0644): the saver writes them through a
    private temporary file (0600), which a container running as another UID could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for file in path.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~umask)
