"""`etchr train rl` on the tiny checkpoint, through a real reward service and a test MLLM whose verdicts
favour green edits: the mean reward rises (on the checkpoint with the fitted VAE, whose edits can differ
visibly), log-probs and advantages line up with their rollouts, a dead reward service stops training, the
LoRA is served, resume continues, the Eq. 1 filter keeps the right rows. Rollouts sample as the authors'
release does by default (guidance 1.0: one DiT forward per step; one start noise per group; the reward sees
the last step's x0-prediction), and each older behaviour is one option away."""

from __future__ import annotations

import base64
import io
import json
import logging
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from etchr.clients.reward import RewardClient
from etchr.manifest import ManifestRow, read_manifest, write_manifest
from etchr.tasks import JUDGE_REPLY_CONVENTION
from etchr_editor.model import load_editor
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.service import create_app as create_editor_app
from etchr_train.checkpoints import STATE, latest_checkpoint
from etchr_train.examples import TrainingBatch, TrainingExample
from etchr_train.rl import RewardUnavailable, RLConfig, policy_loss, reward_items, train_rl
from etchr_train.rl_data import filter_manifest
from etchr_train.rollouts import sample_trajectories
from tests.editor.test_api import editor_settings
from tests.editor.test_rl_filter import reward_service
from tests.editor.test_train_sft import edit_pixels
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import UvicornThread

RIGHT, WRONG = "\\boxed{B}", "\\boxed{A}"
JUDGE_MARK = JUDGE_REPLY_CONVENTION  # every default judge prompt ends with it
K = 4
ALONE_RIGHT, ALONE_WRONG = (128, 120, 128), (110, 110, 120)  # the two originals of the RL set
QUESTION = "Which colour dominates the picture?\n(A) red\n(B) green\n(C) blue"


def greenness(image: Image.Image) -> float:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return float(pixels[..., 1].mean() - (pixels[..., 0].mean() + pixels[..., 2].mean()) / 2)


def decode_data_url(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


class GreenJudge:
    """U answers right, and J says "1", in as many of the k decodings as thresholds the edit's greenness
    passes: a graded reward for "make it greener". The thresholds come from the untrained policy's edits."""

    def __init__(self) -> None:
        self.thresholds = [0.0] * K

    def __call__(self, request: RecordedRequest) -> Reply | str:
        if request.image_count == 1:  # Eq. 1's base query: U is right alone on the bright original only
            bright = decode_data_url(request.images[0]).convert("RGB").getpixel((0, 0))[0] == ALONE_RIGHT[0]
            return Reply(content=[RIGHT if bright else WRONG for _ in range(request.n)])
        passed = sum(greenness(decode_data_url(request.images[1])) > t for t in self.thresholds)
        if JUDGE_MARK in request.text:
            return Reply(content=["1" if i < passed else "0" for i in range(request.n)])
        return Reply(content=[RIGHT if i < passed else WRONG for i in range(request.n)])


def spread_thresholds(judge: GreenJudge, model_dir: Path, rl_set: Path, *, eta: float) -> None:
    """Thresholds at the quantiles of the untrained policy's greenness on the RL set: rewards start near
    0.5 and differ within every group, so advantages are not all zero.

    The quantiles are those of one rollout's greenness over its start noise and its SDE noise, so the 8
    rollouts per row here each start from their own noise (``shared_noise=False``): 8 rollouts of one
    shared start noise would sample that distribution at one start noise per row only, and put the
    thresholds wherever that draw fell (the trainer's groups, one start noise each, then started at a
    mean reward of 0.86 instead of about 0.5). The rest is sampled as the trainer samples (guidance 1.0, x0).
    """
    sampler = BatchedSampler(load_editor(str(model_dir), device="cpu").pipe)
    values = []
    for row in read_manifest(rl_set / "manifest.jsonl"):
        image = Image.open(rl_set / row.image).convert("RGB")
        request = SampleRequest(image=image, prompt="x", seeds=tuple(range(8)), steps=4, guidance_scale=1.0)
        rollouts = sample_trajectories(sampler, [request], eta=eta, shared_noise=False)
        values += [greenness(edit) for edit in rollouts.images]
    judge.thresholds = [float(q) for q in np.quantile(values, [0.2, 0.4, 0.6, 0.8])]


@pytest.fixture(scope="module")
def rl_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two rows, two grey-ish pictures, one multiple-choice question each (answer B)."""
    out = tmp_path_factory.mktemp("rl-set")
    (out / "images").mkdir()
    rows = []
    for index, colour in enumerate([ALONE_RIGHT, ALONE_WRONG]):
        Image.new("RGB", (64, 64), colour).save(out / "images" / f"{index}.png")
        Image.new("RGB", (64, 64), (40, 200, 40)).save(out / "images" / f"{index}_edit.png")
        rows.append(
            ManifestRow(
                id=f"row{index}",
                task="perception",
                image=f"images/{index}.png",
                question=QUESTION,
                answer="B",
                edited_image=f"images/{index}_edit.png",
                scorer="option",
            )
        )
    write_manifest(out / "manifest.jsonl", rows)
    return out


@pytest.fixture(scope="module")
def judge() -> GreenJudge:
    return GreenJudge()


@pytest.fixture(scope="module")
def mllm(judge: GreenJudge) -> Iterator[ScriptedMLLM]:
    server = ScriptedMLLM(judge).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reward_url(redis_server: RedisServer, mllm: ScriptedMLLM) -> Iterator[str]:
    yield from reward_service(redis_server, mllm, "rl-test")


def config(data: Path, model: Path, out: Path, reward_url: str, **overrides: object) -> RLConfig:
    values: dict[str, object] = {
        "data": data,
        "model": str(model),
        "out": out,
        "reward_url": reward_url,
        "group_size": 4,
        "prompts_per_step": 2,
        "steps": 3,
        "sample_steps": 4,
        "eta": 0.7,
        "lr": 1e-3,
        "rank": 8,
        "alpha": 16.0,
        "clip_range": 0.2,
        "timestep_fraction": 0.5,
        "minibatches": 1,
        "k": K,
        "resolution": 64,
        "save_every": 2,
        "progress": False,
    }
    return RLConfig(**{**values, **overrides})  # type: ignore[arg-type]


def test_recorded_log_probs_are_the_policys_own(tiny_editor_dir: Path) -> None:
    """Before any update the ratio is exactly 1: recomputing each step's log-prob reproduces the record."""
    sampler = BatchedSampler(load_editor(str(tiny_editor_dir), device="cpu").pipe)
    image = Image.new("RGB", (64, 64), (90, 140, 60))
    request = SampleRequest(image=image, prompt="show it", seeds=(3, 4, 5), steps=4, guidance_scale=2.0)
    rollouts = sample_trajectories(sampler, [request], eta=0.7)
    assert rollouts.log_probs.shape == (4, 3) and torch.isfinite(rollouts.log_probs).all()
    with torch.no_grad():
        for k in range(rollouts.steps):
            recomputed = rollouts.step_log_prob(sampler, k)
            torch.testing.assert_close(recomputed.log_prob, rollouts.log_probs[k], atol=1e-5, rtol=0)
            loss, clipped = policy_loss(recomputed.log_prob, rollouts.log_probs[k], torch.ones(3), 1e-4)
            torch.testing.assert_close(loss, -torch.ones(3), atol=1e-4, rtol=0)
            assert not clipped.any()
    again = sample_trajectories(sampler, [request], eta=0.7)
    torch.testing.assert_close(again.next_latents, rollouts.next_latents)  # seeds fix the trajectory
    other = sample_trajectories(sampler, [request], eta=1.2)
    assert not torch.allclose(other.next_latents[-1], rollouts.next_latents[-1])


def transformer_calls(pipe: object) -> tuple[list[int], object]:
    """Rows of every call of the pipeline's DiT, recorded by a forward hook (and the hook, to remove)."""
    calls: list[int] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        calls.append(kwargs["hidden_states"].shape[0])

    return calls, pipe.transformer.register_forward_hook(record, with_kwargs=True)  # type: ignore[attr-defined]


def test_rollouts_at_guidance_one_run_one_forward_per_step(tiny_editor_dir: Path) -> None:
    """Guidance 1.0 (the default, as the release samples rollouts): one DiT forward of G rows per denoising
    step and per re-evaluated step; 3.5 (the served CFG) doubles every forward's rows, cond and uncond."""
    assert RLConfig.model_fields["guidance_scale"].default == 1.0
    pipe = load_editor(str(tiny_editor_dir), device="cpu").pipe
    sampler = BatchedSampler(pipe)
    image = Image.new("RGB", (64, 64), (90, 140, 60))
    for guidance, rows in ((1.0, 3), (3.5, 6)):
        request = SampleRequest(image=image, prompt="p", seeds=(1, 2, 3), steps=4, guidance_scale=guidance)
        calls, hook = transformer_calls(pipe)
        try:
            rollouts = sample_trajectories(sampler, [request], eta=0.7)
            assert calls == [rows] * 4, (guidance, calls)
            calls.clear()
            with torch.no_grad():
                recomputed = rollouts.step_log_prob(sampler, 2)
            assert calls == [rows]
        finally:
            hook.remove()
        torch.testing.assert_close(recomputed.log_prob, rollouts.log_probs[2], atol=1e-5, rtol=0)


def test_shared_start_noise_per_group_and_sde_noise_per_rollout(tiny_editor_dir: Path) -> None:
    """Shared (the default): the G rollouts of a request start from the same latents (its first seed's) and
    still end apart (their own SDE noise); unshared: each starts from its own seed's noise."""
    sampler = BatchedSampler(load_editor(str(tiny_editor_dir), device="cpu").pipe)
    image = Image.new("RGB", (64, 64), (90, 140, 60))
    requests = [
        SampleRequest(image=image, prompt="p", seeds=(11, 12, 13), steps=4, guidance_scale=1.0),
        SampleRequest(image=image, prompt="q", seeds=(21, 22, 23), steps=4, guidance_scale=1.0),
    ]
    shared = sample_trajectories(sampler, requests, eta=0.7)
    own = sample_trajectories(sampler, requests, eta=0.7, shared_noise=False)
    for group in (slice(0, 3), slice(3, 6)):
        start, end = shared.latents[0][group], shared.next_latents[-1][group]
        assert all(torch.equal(start[0], row) for row in start[1:])
        assert all(not torch.allclose(end[0], row) for row in end[1:])
        starts = own.latents[0][group]
        assert all(not torch.allclose(starts[0], row) for row in starts[1:])
    assert not torch.allclose(shared.latents[0][0], shared.latents[0][3])  # each group its own noise
    # the group's noise is its first rollout's own: that rollout is the same either way
    torch.testing.assert_close(shared.next_latents[:, [0, 3]], own.next_latents[:, [0, 3]])
    # ... and serving's start noise for that seed
    torch.testing.assert_close(sampler.initial_latents((11,), 64, 64).float(), shared.latents[0][:1])


def test_the_reward_sees_the_last_steps_x0_prediction(tiny_editor_dir: Path) -> None:
    """`x0` (the default, as the release) decodes x_K − σ_K·v_K at the last step, which is what the
    deterministic Euler step of diffusers' scheduler returns from the same latents (to σ = 0); `final`
    decodes the last SDE sample, noisy."""
    sampler = BatchedSampler(load_editor(str(tiny_editor_dir), device="cpu").pipe)
    image = Image.new("RGB", (64, 64), (90, 140, 60))
    request = SampleRequest(image=image, prompt="p", seeds=(5, 6), steps=4, guidance_scale=1.0)
    x0 = sample_trajectories(sampler, [request], eta=0.7)
    final = sample_trajectories(sampler, [request], eta=0.7, reward_image="final")
    torch.testing.assert_close(x0.next_latents, final.next_latents)  # the same rollouts, decoded apart
    assert x0.sigmas[-1] == 0
    last = x0.latents[-1]
    with torch.no_grad():
        velocity = sampler.velocity(x0.cond, last, x0.timesteps[-1])
    scheduler, timesteps = sampler.schedule(4, 64, 64)
    scheduler.set_begin_index(len(timesteps) - 1)  # its step() starts at the last step
    euler = scheduler.step(velocity.float(), timesteps[-1], last, return_dict=False)[0]
    torch.testing.assert_close(euler, last - x0.sigmas[-2] * velocity.float(), atol=1e-6, rtol=0)
    expected = sampler.decode(euler, 64, 64)
    noisy = sampler.decode(final.next_latents[-1], 64, 64)
    for got, want, sde, shown in zip(x0.images, expected, noisy, final.images, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want))
        assert np.array_equal(np.asarray(shown), np.asarray(sde))
        assert not np.array_equal(np.asarray(got), np.asarray(shown))
    with pytest.raises(ValueError, match="reward_image"):
        sample_trajectories(sampler, [request], eta=0.7, reward_image="last")  # type: ignore[arg-type]


def test_group_advantages_arrive_aligned_with_their_rollouts(
    tiny_editor_dir: Path, rl_set: Path, reward_url: str, judge: GreenJudge
) -> None:
    sampler = BatchedSampler(load_editor(str(tiny_editor_dir), device="cpu").pipe)
    [row] = list(read_manifest(rl_set / "manifest.jsonl"))[:1]
    image = Image.open(rl_set / row.image).convert("RGB")
    request = SampleRequest(image=image, prompt="p", seeds=tuple(range(20, 28)), steps=4, guidance_scale=2.0)
    rollouts = sample_trajectories(sampler, [request], eta=0.7)
    values = sorted(greenness(edit) for edit in rollouts.images)
    judge.thresholds = [values[1], values[3], values[5], values[6]]  # every count of passed thresholds occurs
    example = TrainingExample(
        id=row.id, prompt="p", image=rl_set / row.image, target=None, size=(64, 64), question=row.question,
        answer=row.answer, task=row.task, scorer=row.scorer,
    )  # fmt: skip
    batch = TrainingBatch(index=0, examples=[example], images=[image], targets=[])
    with RewardClient(reward_url) as client:
        result = client.reward(reward_items(batch, rollouts, 8, "aligned"), k=K, advantage="pref-grpo")
    [item] = result.items
    passed = [sum(greenness(edit) > t for t in judge.thresholds) for edit in rollouts.images]
    assert [r.correctness for r in item.rewards] == [p / K for p in passed]
    assert item.advantages is not None and len(set(passed)) > 1
    greener = sorted(range(8), key=lambda i: passed[i])
    assert item.advantages[greener[-1]] > item.advantages[greener[0]]


@pytest.mark.slow
def test_mean_reward_rises_against_the_reward_service(
    fitted_editor_dir: Path, rl_set: Path, reward_url: str, judge: GreenJudge, tmp_path: Path
) -> None:
    """Thresholds at the quantiles of the untrained policy's greenness put the reward near 0.5 at first;
    35 Pref-GRPO steps with the trainer's rollout defaults (guidance 1.0, one start noise per group, the
    x0-prediction rewarded, η = 0.7) push it up; with one torch thread (as CI runs) 25 were not enough to
    rise clear of the step-to-step noise. The checkpoint's VAE is fitted: a random one decodes every latent
    to nearly the same picture, so no image-level reward could move.

    η: this test ran at η = 0.4 while the reward saw the last SDE sample; at 0.7 the last step's injected
    noise drowned the tiny policy's own signal (0.60 → 0.66). The x0-prediction leaves that noise out of
    the reward, and then 0.4 is too little: only the 3 earlier steps' noise tells a group's edits apart, and
    35 steps moved the mean reward 0.65 → 0.70 (trained greenness −20 → −11). At the default 0.7 it rises
    0.64 → 1.00 (the numbers of one run each, seed 0)."""
    spread_thresholds(judge, fitted_editor_dir, rl_set, eta=0.7)
    out = tmp_path / "rl"
    train_rl(config(rl_set, fitted_editor_dir, out, reward_url, steps=35, save_every=0, lr=3e-2))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 36))
    first = statistics.mean(row["reward_mean"] for row in rows[:6])
    last = statistics.mean(row["reward_mean"] for row in rows[-6:])
    assert last > first + 0.15, (first, last)
    assert statistics.mean(row["guidance_mean"] for row in rows[-6:]) > statistics.mean(
        row["guidance_mean"] for row in rows[:6]
    )


def test_resume_serve_and_a_dead_reward_service_stops_training(
    tiny_editor_dir: Path,
    rl_set: Path,
    reward_url: str,
    judge: GreenJudge,
    tmp_path: Path,
    redis_server: RedisServer,
    key_prefix: str,
) -> None:
    spread_thresholds(judge, tiny_editor_dir, rl_set, eta=0.7)
    out = tmp_path / "rl"
    train_rl(config(rl_set, tiny_editor_dir, out, reward_url, steps=2, lr=1e-2))
    resumed = train_rl(config(rl_set, tiny_editor_dir, out, reward_url, steps=3, lr=1e-2, resume=True))
    assert resumed.start_step == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    required = {"step", "reward_mean", "guidance_mean", "correctness_mean", "loss", "clip_frac", "kl"}
    assert all(required <= set(row) for row in rows)

    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(RewardUnavailable, match=r"127\.0\.0\.1:9.*step 4"):
        train_rl(config(rl_set, tiny_editor_dir, out, dead, steps=5, lr=1e-2, resume=True))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # nothing trained on missing rewards
    assert latest_checkpoint(out) == out / "checkpoint-3"

    servers = []
    try:
        for name, loras in (("base", []), ("rl", [str(resumed.out)])):
            settings = editor_settings(
                redis_server.url, f"{key_prefix}-{name}", tiny_editor_dir, editor_lora=loras
            )
            servers.append(UvicornThread(create_editor_app(settings)).start())
        base, trained = (edit_pixels(server.url) for server in servers)
        assert np.abs(base - trained).mean() > 0.5  # the RL LoRA loads in the editor and changes its edit
    finally:
        for server in servers:
            server.stop()


def strip_rollout_keys(checkpoint: Path) -> None:
    """Make ``checkpoint`` one written before `reward_image` and `shared_noise` existed."""
    state = torch.load(checkpoint / STATE, map_location="cpu", weights_only=False)
    del state["config"]["reward_image"], state["config"]["shared_noise"]
    torch.save(state, checkpoint / STATE)


def test_resuming_a_checkpoint_from_before_the_rollout_options(
    tiny_editor_dir: Path,
    rl_set: Path,
    reward_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rollout settings are neither structural (any adapter samples under any of them) nor the data order:
    a checkpoint from before the options resumes. It was sampled the old way (CFG 3.5, the final sample
    decoded, start noise per rollout), so passing those values goes on quietly, and the new defaults go on
    with a warning that names each change; the run's config records what it ran with."""
    out = tmp_path / "rl"
    old = {"guidance_scale": 3.5, "reward_image": "final", "shared_noise": False}
    train_rl(config(rl_set, tiny_editor_dir, out, reward_url, steps=1, lr=1e-2, **old))
    assert json.loads((out / "train_config.json").read_text()).items() >= old.items()
    strip_rollout_keys(out / "checkpoint-1")
    with caplog.at_level(logging.WARNING, logger="etchr.train"):
        train_rl(config(rl_set, tiny_editor_dir, out, reward_url, steps=2, lr=1e-2, resume=True, **old))
    assert "rollout sampling" not in caplog.text

    strip_rollout_keys(out / "checkpoint-2")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="etchr.train"):
        resumed = train_rl(config(rl_set, tiny_editor_dir, out, reward_url, steps=3, lr=1e-2, resume=True))
    assert resumed.start_step == 2
    [warning] = [message for message in caplog.messages if "rollout sampling" in message]
    assert "guidance_scale 3.5 → 1.0;" in warning
    assert "reward_image 'final' → 'x0' (not recorded: the checkpoint predates it)" in warning
    assert "shared_noise False → True (not recorded: the checkpoint predates it)" in warning
    new = {"guidance_scale": 1.0, "reward_image": "x0", "shared_noise": True}
    assert json.loads((out / "train_config.json").read_text()).items() >= new.items()
    saved = torch.load(out / "checkpoint-3" / STATE, map_location="cpu", weights_only=False)["config"]
    assert saved.items() >= new.items()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_filter_keeps_the_rows_the_edit_makes_the_difference(
    rl_set: Path, reward_url: str, tmp_path: Path
) -> None:
    """Eq. 1: a row U answers alone is dropped; one it fails alone and answers with the (green) true edit
    is kept — by the library call and by `etchr train filter`, with image paths re-rooted at the output."""
    with RewardClient(reward_url) as client:
        summary = filter_manifest(rl_set, tmp_path / "lib", client, k=1)
    assert (summary.seen, summary.kept) == (2, 1)
    [row] = list(read_manifest(summary.manifest))
    assert row.id == "row1"
    assert (summary.manifest.parent / row.image).is_file() and (
        summary.manifest.parent / row.edited_image
    ).is_file()
    command = [sys.executable, "-m", "etchr_tools.cli", "train", "filter", "--data", str(rl_set)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "cli"), "--reward-url", reward_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "kept 1 of 2 rows" in done.stdout
    assert [r.id for r in read_manifest(tmp_path / "cli" / "manifest.jsonl")] == ["row1"]
    dead = subprocess.run(
        [*command, "--out", str(tmp_path / "dead"), "--reward-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dead.returncode == 1 and "reward service at http://127.0.0.1:9" in dead.stderr


def test_starting_from_a_stage_one_lora_with_a_kl_term(
    tiny_editor_dir: Path, rl_set: Path, reward_url: str, judge: GreenJudge, tmp_path: Path
) -> None:
    """`--lora` fuses the Stage I adapter into the base (the reference policy); the KL to it is 0 while the
    new adapter is still zero (step 1) and positive once it has moved (step 2)."""
    spread_thresholds(judge, tiny_editor_dir, rl_set, eta=0.7)
    stage_one = train_rl(config(rl_set, tiny_editor_dir, tmp_path / "one", reward_url, steps=1, lr=1e-2))
    out = tmp_path / "two"
    lora = (str(stage_one.out),)
    train_rl(config(rl_set, tiny_editor_dir, out, reward_url, steps=2, lr=1e-2, kl_beta=0.5, lora=lora))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert rows[1]["kl"] > 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["lora"] == [str(stage_one.out)] and "reward_api_key" not in saved
    assert (saved["guidance_scale"], saved["reward_image"], saved["shared_noise"]) == (1.0, "x0", True)
