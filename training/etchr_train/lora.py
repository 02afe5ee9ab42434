"""LoRA adapters on the FLUX.2 DiT: which layers, how they are added, saved, reloaded and merged.

Checkpoints are written in the diffusers LoRA format (``pytorch_lora_weights.safetensors`` with the peft
config as metadata), so ``Flux2KleinPipeline.load_lora_weights`` and ``ETCHR_EDITOR_LORA`` take them as
they are, alpha included.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import Flux2KleinPipeline
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from etchr_editor.model import fuse_loras, load_pipeline

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file name diffusers writes and looks for
ADAPTER = "default"

# Every nn.Linear inside the DiT blocks, and nothing outside them (embedders, modulations, norm_out,
# proj_out): the paper's "all linear layers in the DiT blocks", and the set of the authors' release
# (SFT/ft_klein.sh, which trains it at rank 768). Matched as name suffixes against the DiT's Linear layers
# only (``resolve_targets``).
DIT_BLOCK_TARGETS: tuple[str, ...] = (
    # double-stream blocks (transformer_blocks): image-stream attention, its added-text projections
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",  # the double blocks' ``to_out`` is a ModuleList; its Linear is ``to_out.0``
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    # ... and the feed-forward of each stream (Flux2FeedForward: SwiGLU between linear_in and linear_out)
    "ff.linear_in",
    "ff.linear_out",
    "ff_context.linear_in",
    "ff_context.linear_out",
    # single-stream blocks (single_transformer_blocks): the fused qkv + MLP-in projection, the fused output
    "to_qkv_mlp_proj",
    "to_out",  # a Linear only in the single blocks
)
# The set ``etchr train sft`` trains by default (``--targets`` overrides it).
DEFAULT_TARGETS: tuple[str, ...] = DIT_BLOCK_TARGETS
# Stage II's set, as the project trained it before the SFT default grew: the double blocks' attention
# without their feed-forwards, and both single-block projections. RL runs keep it (a resumed RL checkpoint
# must match it).
RL_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "to_qkv_mlp_proj",
    "to_out",
)


def resolve_targets(transformer: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of the Linear layers whose name is, or ends with ``.``, one of ``targets``.

    Every target must match at least one layer: a typo would otherwise train fewer layers than asked.
    """
    linear = [
        name
        for name, module in transformer.named_modules()
        if ".lora_" not in name
        and not name.endswith(".base_layer")
        and (
            isinstance(module, torch.nn.Linear)
            or isinstance(getattr(module, "base_layer", None), torch.nn.Linear)
        )
    ]  # plain Linear layers, and those peft already wraps (an adapter was added before)
    resolved: list[str] = []
    for target in targets:
        hits = [name for name in linear if name == target or name.endswith("." + target)]
        if not hits:
            raise ValueError(f"LoRA target {target!r} matches no Linear layer of the transformer")
        resolved.extend(hits)
    return sorted(set(resolved))


def add_lora(transformer: torch.nn.Module, *, rank: int, alpha: float, targets: Sequence[str]) -> LoraConfig:
    """Freeze the DiT and add one trainable LoRA adapter (B = 0, so the model starts unchanged)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights=True,
        target_modules=resolve_targets(transformer, targets),
    )
    transformer.add_adapter(config, adapter_name=ADAPTER)
    return config


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [param for param in transformer.parameters() if param.requires_grad]


def save_lora(transformer: torch.nn.Module, directory: Path) -> Path:
    """Write the adapter as ``directory/pytorch_lora_weights.safetensors`` (diffusers format + metadata)."""
    directory.mkdir(parents=True, exist_ok=True)
    config: LoraConfig = transformer.peft_config[ADAPTER]
    Flux2KleinPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=ADAPTER),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return directory / LORA_WEIGHTS


def load_lora(transformer: torch.nn.Module, directory: Path) -> None:
    """Put saved adapter weights back into the adapter ``add_lora`` made (resume)."""
    state = load_file(str(directory / LORA_WEIGHTS))
    prefix = "transformer."
    state = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{directory}: LoRA weights for layers the adapter does not have: {unexpected[:5]}")
    missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
    if missing:
        raise ValueError(f"{directory}: LoRA weights missing for adapter layers: {missing[:5]}")


def merge_lora(
    model: str,
    loras: Sequence[str],
    out: Path,
    *,
    lora_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A full checkpoint with the LoRA(s) fused into the DiT, loadable like any base model."""
    pipe = load_pipeline(model, dtype)
    fuse_loras(pipe, loras, lora_scale)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def trainable_pipeline(
    model: str,
    *,
    device: torch.device,
    mixed_precision: str,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    seed: int,
    fused_loras: Sequence[str] = (),
    gradient_checkpointing: bool = False,
) -> Flux2KleinPipeline:
    """The editor pipeline ready for LoRA training: base weights in the precision's dtype (earlier LoRAs
    fused in), VAE and text encoder frozen, one seeded adapter added (its init is part of the run, the same
    on every rank) and kept in float32 under mixed precision."""
    pipe = load_pipeline(model, WEIGHT_DTYPES[mixed_precision])
    pipe.set_progress_bar_config(disable=True)
    if fused_loras:
        fuse_loras(pipe, fused_loras, 1.0)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        add_lora(pipe.transformer, rank=rank, alpha=alpha, targets=targets)
    if mixed_precision != "no":
        cast_training_params(pipe.transformer, dtype=torch.float32)
    if gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    return pipe
