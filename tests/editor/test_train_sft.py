"""`etchr train sft` on the tiny checkpoint and a small maze corpus: it learns, saves in the format the
editor serves, resumes exactly where it stopped, and its LoRA merges into a checkpoint that edits the same."""

from __future__ import annotations

import base64
import io
import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from peft.tuners.lora import LoraLayer
from PIL import Image
from safetensors.torch import load_file

from etchr.imaging import fit_model_size
from etchr.settings import EditorSettings
from etchr_editor.service import create_app
from etchr_tools.data.build import build_corpus
from etchr_train.checkpoints import latest_checkpoint
from etchr_train.lora import LORA_WEIGHTS, RL_TARGETS, add_lora, load_lora
from etchr_train.sft import SFTConfig, SFTResult, train_sft
from tests.editor.test_api import edit_body, editor_settings
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import UvicornThread

ETCHR = (sys.executable, "-m", "etchr_tools.cli")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")
RANK, ALPHA = 8, 16.0  # alpha ≠ rank: the scale must survive saving and loading


@pytest.fixture(scope="module")
def maze(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 80×80 maze rows with their solution edits (64×64 at --resolution 64)."""
    out = tmp_path_factory.mktemp("maze")
    build_corpus("maze", n=8, out=out, seed=0, progress=False, rows=5, cols=5, min_path=2)
    return out


@pytest.fixture(scope="module")
def two_rows(maze: Path) -> Path:
    lines = (maze / "manifest.jsonl").read_text().splitlines()[:2]
    path = maze / "two.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(data: Path, model: Path, out: Path, **overrides: object) -> SFTConfig:
    values: dict[str, object] = {
        "data": data,
        "model": str(model),
        "out": out,
        "steps": 4,
        "resolution": 64,
        "rank": RANK,
        "alpha": ALPHA,
        "lr": 3e-3,
        "batch_size": 2,
        "save_every": 2,
        "progress": False,
        **overrides,
    }
    return SFTConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def overfit(two_rows: Path, tiny_editor_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SFTResult:
    """60 steps on two rows: enough for the tiny DiT to fit them visibly."""
    out = tmp_path_factory.mktemp("overfit")
    return train_sft(config(two_rows, tiny_editor_dir, out, steps=60, save_every=0))


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_when_overfitting_a_few_rows(overfit: SFTResult) -> None:
    rows = [json.loads(line) for line in (overfit.out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 61))
    assert all(set(row) == {"step", "loss", "lr"} and row["lr"] == 3e-3 for row in rows)
    values = losses(overfit.out)
    first, last = statistics.mean(values[:10]), statistics.mean(values[-10:])
    assert last < 0.75 * first, (first, last)
    assert overfit.final_loss == values[-1]
    assert (overfit.out / LORA_WEIGHTS).is_file() and latest_checkpoint(overfit.out).name == "checkpoint-60"


def test_lora_loads_in_diffusers_with_its_scale(overfit: SFTResult, tiny_editor_dir: Path) -> None:
    """diffusers' loader gives the same DiT as the trainer's adapter: rank, alpha and weights round-trip."""
    loaded = Flux2KleinPipeline.from_pretrained(tiny_editor_dir)
    loaded.load_lora_weights(str(overfit.out))
    lora_config = loaded.transformer.peft_config[next(iter(loaded.transformer.peft_config))]
    assert (lora_config.r, lora_config.lora_alpha) == (RANK, ALPHA)

    trained = Flux2KleinPipeline.from_pretrained(tiny_editor_dir).transformer
    add_lora(trained, rank=RANK, alpha=ALPHA, targets=SFTConfig.model_fields["targets"].default)
    load_lora(trained, overfit.out)
    base = Flux2KleinPipeline.from_pretrained(tiny_editor_dir).transformer

    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 32, 16, generator=generator),
        "encoder_hidden_states": torch.randn(1, 8, 48, generator=generator),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(1, 32, 4),
        "txt_ids": torch.zeros(1, 8, 4),
        "return_dict": False,
    }
    with torch.no_grad():
        diffusers_out = loaded.transformer(**inputs)[0]
        trained_out = trained(**inputs)[0]
        base_out = base(**inputs)[0]
    torch.testing.assert_close(diffusers_out, trained_out)
    assert (diffusers_out - base_out).abs().max() > 1e-2  # the LoRA is not a no-op


BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")


def linear_layers(transformer: torch.nn.Module) -> set[str]:
    return {name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)}


def test_default_lora_targets_are_every_linear_layer_of_the_dit_blocks(tiny_editor_dir: Path) -> None:
    """The paper's "all linear layers in the DiT blocks": every nn.Linear under the double- and single-stream
    blocks (attention, added-text projections, feed-forwards, the fused single-block projections) gets a
    LoRA, and none outside them (embedders, modulations, norm_out, proj_out) does."""
    transformer = Flux2KleinPipeline.from_pretrained(tiny_editor_dir).transformer
    linears = linear_layers(transformer)
    inside = {name for name in linears if name.startswith(BLOCKS)}
    outside = linears - inside
    # the walk sees both feed-forwards of a double block and the single blocks' fused layers
    assert {"transformer_blocks.0.ff.linear_in", "transformer_blocks.1.ff_context.linear_out"} <= inside
    assert {
        "single_transformer_blocks.1.attn.to_qkv_mlp_proj",
        "single_transformer_blocks.0.attn.to_out",
    } <= inside
    assert {"x_embedder", "context_embedder", "proj_out", "norm_out.linear"} <= outside

    add_lora(transformer, rank=4, alpha=4.0, targets=SFTConfig.model_fields["targets"].default)
    adapted = {name for name, module in transformer.named_modules() if isinstance(module, LoraLayer)}
    assert adapted == inside
    trainable = {name.split(".lora_")[0] for name, p in transformer.named_parameters() if p.requires_grad}
    assert trainable == inside  # and only the adapters train

    rl = Flux2KleinPipeline.from_pretrained(tiny_editor_dir).transformer
    add_lora(rl, rank=4, alpha=4.0, targets=RL_TARGETS)  # Stage II keeps its set: no feed-forwards
    rl_adapted = {name for name, module in rl.named_modules() if isinstance(module, LoraLayer)}
    assert rl_adapted == {name for name in inside if ".ff." not in name and ".ff_context." not in name}


def test_default_resolution_is_the_editors_own_pixel_budget(
    maze: Path, tiny_editor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --resolution an image is fitted as the editor serves it: fit_model_size into
    ETCHR_EDITOR_MAX_MODEL_PIXELS (1 MP unless set; set small here to keep the test fast)."""
    assert SFTConfig.model_fields["resolution"].default is None
    unset = config(maze, tiny_editor_dir, tmp_path, resolution=None)
    assert unset.max_pixels(EditorSettings()) == 1024 * 1024

    monkeypatch.setenv("ETCHR_EDITOR_MAX_MODEL_PIXELS", str(64 * 64))
    budget = EditorSettings().editor_max_model_pixels
    result = train_sft(
        config(maze, tiny_editor_dir, tmp_path / "out", resolution=None, steps=1, save_every=0)
    )
    saved = json.loads((result.out / "train_config.json").read_text())
    assert saved["resolution"] is None and saved["max_pixels"] == budget
    assert saved["targets"] == list(SFTConfig.model_fields["targets"].default)
    # the maze images are 80×80: the editor's budget fits them to 64×64, the old 512² default kept 80×80
    assert fit_model_size(80, 80, max_pixels=budget) == (64, 64) != fit_model_size(80, 80, max_pixels=512**2)


def edit_pixels(url: str) -> np.ndarray:
    """One /edit of the standard test request (fixed seed), as an int16 pixel array."""
    response = httpx.post(f"{url}/edit", json=edit_body(n=1), timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))), dtype=np.int16)


@pytest.fixture
def serve(redis_server: RedisServer, key_prefix: str) -> Iterator[object]:
    servers: list[UvicornThread] = []

    def start(name: str, model: Path, **overrides: object) -> str:
        settings = editor_settings(redis_server.url, f"{key_prefix}-{name}", model, **overrides)
        servers.append(UvicornThread(create_app(settings)).start())
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


def test_service_serves_the_lora_and_the_merged_checkpoint_alike(
    overfit: SFTResult, tiny_editor_dir: Path, tmp_path: Path, serve
) -> None:
    """ETCHR_EDITOR_LORA=OUT changes the service's edit for one seed; the merged checkpoint gives it too."""
    merged = tmp_path / "merged"
    done = subprocess.run(
        [
            *ETCHR,
            "train",
            "merge",
            "--model",
            str(tiny_editor_dir),
            "--lora",
            str(overfit.out),
            "--out",
            str(merged),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    base = edit_pixels(serve("base", tiny_editor_dir))
    with_lora = edit_pixels(serve("lora", tiny_editor_dir, editor_lora=[str(overfit.out)]))
    from_merged = edit_pixels(serve("merged", merged))
    assert base.shape == with_lora.shape == from_merged.shape
    assert np.abs(with_lora - base).mean() > 2.0  # grey levels: the adapter really changes the edit
    assert np.abs(with_lora - from_merged).max() <= 1  # fused at load vs merged on disk: the same model


def test_resume_continues_exactly_where_the_run_stopped(
    maze: Path, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    straight = train_sft(config(maze, tiny_editor_dir, tmp_path / "straight", steps=4))

    interrupted = tmp_path / "interrupted"
    train_sft(config(maze, tiny_editor_dir, interrupted, steps=3))
    # as if killed after step 3 was logged but before its checkpoint was written
    shutil.rmtree(interrupted / "checkpoint-3")
    with pytest.raises(ValueError, match="--resume"):
        train_sft(config(maze, tiny_editor_dir, interrupted, steps=4))
    resumed = train_sft(config(maze, tiny_editor_dir, interrupted, steps=4, resume=True))

    assert resumed.start_step == 2
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    np.testing.assert_allclose(losses(interrupted), losses(straight.out), rtol=1e-5)
    a, b = load_file(str(straight.lora)), load_file(str(resumed.lora))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)

    with pytest.raises(ValueError, match="already at step 4"):
        train_sft(config(maze, tiny_editor_dir, interrupted, steps=4, resume=True))
    with pytest.raises(ValueError, match="rank"):
        train_sft(config(maze, tiny_editor_dir, interrupted, steps=6, resume=True, rank=4))


def test_gradient_accumulation_and_checkpointing_options_train(
    maze: Path, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    result = train_sft(
        config(
            maze,
            tiny_editor_dir,
            tmp_path / "out",
            steps=2,
            batch_size=1,
            grad_accum=2,
            gradient_checkpointing=True,
            cache_text_embeddings=True,
            targets=("to_q", "to_v"),
        )
    )
    keys = load_file(str(result.lora)).keys()
    assert keys and all(".to_q." in key or ".to_v." in key for key in keys)
    assert len(losses(result.out)) == 2


def test_bad_inputs_are_refused_clearly(maze: Path, tiny_editor_dir: Path, tmp_path: Path) -> None:
    no_targets = tmp_path / "no-targets.jsonl"
    rows = [json.loads(line) for line in (maze / "manifest.jsonl").read_text().splitlines()[:2]]
    rows[1].pop("edited_image")
    no_targets.write_text("".join(json.dumps(row) + "\n" for row in rows))
    shutil.copytree(maze / "images", tmp_path / "images")
    with pytest.raises(ValueError, match="no edited_image"):
        train_sft(config(no_targets, tiny_editor_dir, tmp_path / "a"))
    with pytest.raises(ValueError, match="matches no Linear"):
        train_sft(config(maze, tiny_editor_dir, tmp_path / "b", targets=("to_qq",)))
    with pytest.raises(FileNotFoundError, match="no manifest"):
        train_sft(config(tmp_path / "missing", tiny_editor_dir, tmp_path / "c"))


def test_cli_trains_and_reports_bad_options(maze: Path, tiny_editor_dir: Path, tmp_path: Path) -> None:
    base = [
        sys.executable,
        "-m",
        "etchr_tools.cli",
        "train",
        "sft",
        "--data",
        str(maze),
        "--model",
        str(tiny_editor_dir),
    ]
    common = ["--resolution", "64", "--rank", "4", "--no-progress"]
    done = subprocess.run(
        [*base, "--out", str(tmp_path / "out"), "--steps", "2", *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "ETCHR_EDITOR_LORA=" in done.stdout
    assert (tmp_path / "out" / LORA_WEIGHTS).is_file()
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "bad"), "--steps", "2", "--targets", "nope", *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "matches no Linear layer" in bad.stderr


@pytest.mark.slow
def test_two_processes_train_like_one_accumulating_their_batches(
    maze: Path, tiny_editor_dir: Path, tmp_path: Path
) -> None:
    """torchrun × 2 (gloo on the CPU) shards the micro-batch stream and averages gradients: the same run
    as one process accumulating both micro-batches, and only the main process writes."""
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    common = ["--data", str(maze), "--model", str(tiny_editor_dir), "--steps", "3", "--resolution", "64"]
    common += ["--rank", "4", "--batch-size", "1", "--lr", "1e-3", "--no-progress"]
    port = str(free_port())
    parallel = subprocess.run(
        [*TORCHRUN, "--master_port", port, *ETCHR[1:], "train", "sft", "--out", str(ddp), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert parallel.returncode == 0, parallel.stderr
    assert "2 process(es)" in parallel.stderr
    single = subprocess.run(
        [*ETCHR, "train", "sft", "--out", str(one), "--grad-accum", "2", *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    assert [json.loads(line)["step"] for line in (ddp / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    np.testing.assert_allclose(losses(ddp), losses(one), rtol=1e-4)
    assert load_file(str(ddp / LORA_WEIGHTS)).keys() == load_file(str(one / LORA_WEIGHTS)).keys()
