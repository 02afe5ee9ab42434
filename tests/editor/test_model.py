"""Loading the editor: the tiny checkpoint round trip, devices and dtypes, LoRA fusing, clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import Flux2KleinPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from etchr_editor.model import LoadedEditor, load_editor, resolve_device, resolve_dtype
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.tiny import build_tiny_pipeline

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def edit(pipe: Flux2KleinPipeline) -> np.ndarray:
    """One fixed 2-step CFG edit, as a pixel array."""
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    req = SampleRequest(image=image, prompt="draw the path", seeds=(3,), steps=2, guidance_scale=3.0)
    return np.asarray(BatchedSampler(pipe).sample([req])[0][0], dtype=np.int16)


# ---------------------------------------------------------------- the tiny checkpoint


def test_tiny_checkpoint_round_trips(tiny_editor_dir: Path) -> None:
    loaded = Flux2KleinPipeline.from_pretrained(tiny_editor_dir)
    built = build_tiny_pipeline(seed=0)
    for name in ("transformer", "vae", "text_encoder"):
        saved = getattr(built, name).state_dict()
        for key, value in getattr(loaded, name).state_dict().items():
            assert torch.equal(value, saved[key]), f"{name}.{key}"
    assert loaded.scheduler.config.use_dynamic_shifting
    assert loaded.vae_scale_factor == 8
    assert loaded.transformer.config.in_channels == 4 * loaded.vae.config.latent_channels
    assert loaded.transformer.config.joint_attention_dim == 3 * loaded.text_encoder.config.hidden_size
    assert loaded.text_encoder.config.num_hidden_layers >= 28
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "where is the cup?"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert "where is the cup?" in text
    assert loaded.tokenizer.pad_token is not None
    ids = loaded.tokenizer(text)["input_ids"]
    assert loaded.tokenizer.decode(ids) == text


def test_tiny_pipeline_is_deterministic_per_seed() -> None:
    a, b, c = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    weights = [dict(p.transformer.named_parameters()) for p in (a, b, c)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_build_does_not_disturb_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_pipeline(0)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- devices and dtypes


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "cuda:", "gpu", ""):
        with pytest.raises(ValueError, match="device"):
            resolve_device(bad)
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
        with pytest.raises(ValueError, match="only"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        for unusable in ("cuda", "cuda:0"):
            with pytest.raises(ValueError, match="CUDA is not available"):
                resolve_device(unusable)


def test_resolve_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("bfloat16", cuda) == torch.bfloat16
    assert resolve_dtype("float16", cuda) == torch.float16
    assert resolve_dtype("torch.float32", cuda) == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)


# ---------------------------------------------------------------- load_editor


def test_load_editor_reports_what_it_loaded(tiny_editor: LoadedEditor, tiny_editor_dir: Path) -> None:
    assert isinstance(tiny_editor.pipe, Flux2KleinPipeline)
    assert tiny_editor.device == torch.device("cpu")
    assert tiny_editor.dtype == torch.float32
    assert tiny_editor.info == {
        "name": str(tiny_editor_dir),
        "lora": [],
        "device": "cpu",
        "dtype": "float32",
        "compiled": False,
    }
    assert tiny_editor.pipe.transformer.dtype == torch.float32
    assert tiny_editor.pipe._progress_bar_config.get("disable") is True


def test_load_editor_dtype_and_compile_flag(tiny_editor_dir: Path) -> None:
    """bf16 weights on request; ``compile`` wraps the repeated blocks (compilation itself is lazy)."""
    editor = load_editor(str(tiny_editor_dir), device="cpu", dtype="bfloat16", compile=True)
    assert editor.pipe.transformer.dtype == torch.bfloat16
    assert editor.info["dtype"] == "bfloat16"
    assert editor.info["compiled"] is True
    blocks = [*editor.pipe.transformer.transformer_blocks, *editor.pipe.transformer.single_transformer_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)


def test_bad_model_paths_give_clear_errors(tmp_path: Path, tiny_editor_dir: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_editor(str(missing), device="cpu")
    with pytest.raises(FileNotFoundError, match="not-a-dir"):
        load_editor("not-a-dir", device="cpu")
    with pytest.raises(ValueError, match=r"model_index\.json"):
        load_editor(str(tiny_editor_dir / "vae"), device="cpu")
    with pytest.raises(ValueError, match=r"model_index\.json"):
        load_editor(str(tiny_editor_dir / "model_index.json"), device="cpu")


# ---------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_case(tiny_editor_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A random non-zero LoRA on the tiny transformer, saved as diffusers does; and the unfused output."""
    pipe = Flux2KleinPipeline.from_pretrained(tiny_editor_dir)
    torch.manual_seed(7)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
    pipe.transformer.add_adapter(config)
    out = tmp_path_factory.mktemp("lora")
    # The metadata carries lora_alpha; without it diffusers assumes alpha = rank and the scale is lost.
    Flux2KleinPipeline.save_lora_weights(
        out,
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    pipe.set_progress_bar_config(disable=True)
    return out, edit(pipe)


def test_lora_is_fused_and_matches_unfused(
    lora_case: tuple[Path, np.ndarray], tiny_editor: LoadedEditor, tiny_editor_dir: Path
) -> None:
    lora_dir, unfused = lora_case
    editor = load_editor(str(tiny_editor_dir), loras=[str(lora_dir)], device="cpu")
    fused = edit(editor.pipe)
    base = edit(tiny_editor.pipe)
    assert np.abs(fused - base).max() > 4  # the LoRA changes the output
    assert np.abs(fused - unfused).max() <= 1  # and fusing it changes nothing beyond rounding
    assert editor.info["lora"] == [str(lora_dir)]
    names = [name for name, _ in editor.pipe.transformer.named_modules()]
    assert not any("lora" in name for name in names)  # adapter layers are gone: no per-forward overhead
    assert not getattr(editor.pipe.transformer, "peft_config", None)


def test_lora_file_path_and_zero_scale(
    lora_case: tuple[Path, np.ndarray], tiny_editor: LoadedEditor, tiny_editor_dir: Path
) -> None:
    lora_file = lora_case[0] / "pytorch_lora_weights.safetensors"
    editor = load_editor(str(tiny_editor_dir), loras=[str(lora_file)], lora_scale=0.0, device="cpu")
    assert np.array_equal(edit(editor.pipe), edit(tiny_editor.pipe))


def test_several_loras_are_fused_together(lora_case: tuple[Path, np.ndarray], tiny_editor_dir: Path) -> None:
    """The same LoRA twice at scale 0.5 adds up to it once at scale 1 (W + ½Δ + ½Δ = W + Δ)."""
    lora_dir, unfused = lora_case
    editor = load_editor(
        str(tiny_editor_dir), loras=[str(lora_dir), str(lora_dir)], lora_scale=0.5, device="cpu"
    )
    assert np.abs(edit(editor.pipe) - unfused).max() <= 1
    assert len(editor.info["lora"]) == 2


def test_bad_lora_paths_give_clear_errors(tiny_editor_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing-lora"):
        load_editor(str(tiny_editor_dir), loras=[str(tmp_path / "missing-lora")], device="cpu")
    empty = tmp_path / "empty-lora"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty-lora"):
        load_editor(str(tiny_editor_dir), loras=[str(empty)], device="cpu")
    foreign = tmp_path / "foreign-lora"
    foreign.mkdir()
    save_file(
        {
            "transformer.not_a_layer.lora_A.weight": torch.zeros(4, 8),
            "transformer.not_a_layer.lora_B.weight": torch.zeros(8, 4),
        },
        str(foreign / "pytorch_lora_weights.safetensors"),
    )
    with pytest.raises(ValueError, match="foreign-lora"):
        load_editor(str(tiny_editor_dir), loras=[str(foreign)], device="cpu")


def test_the_tiny_checkpoint_is_readable_by_another_uid(tiny_editor_dir: Path) -> None:
    """A container runs the editor as UID 10001 over a mounted checkpoint: every file must be world-readable
    under the usual umask (the weight saver writes 0600 temporaries otherwise)."""
    umask = os.umask(0)
    os.umask(umask)
    files = [path for path in tiny_editor_dir.rglob("*") if path.is_file()]
    assert any(path.suffix == ".safetensors" for path in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
