"""docs/recipe.md states this project's defaults next to the paper's and the release's: every value it gives
with its setting in brackets must be the code's current default (settings, request models, CLI, trainers)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from etchr.protocol.reward import FilterRequest, RewardRequest
from etchr.settings import EditorSettings, RewardSettings, VerifierSettings
from etchr_tools import cli
from etchr_train.lora import DIT_BLOCK_TARGETS
from etchr_train.rl import RLConfig
from etchr_train.rl_data import DEFAULT_K
from etchr_train.sft import SFTConfig

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "recipe.md"


def fmt(value: float) -> str:
    """How the page writes a number: 40, 3.5, 0, 0.7, 1e-4."""
    if value and abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:g}"


def default(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].default


def cli_default(command: Any, option: str) -> Any:
    return inspect.signature(command).parameters[option].default


def expected_fragments() -> list[str]:
    rl_rank, rl_alpha = cli_default(cli.train_rl, "rank"), cli_default(cli.train_rl, "alpha")
    fraction = cli_default(cli.train_rl, "timestep_fraction")
    filter_k = default(FilterRequest, "k")
    return [
        f"{fmt(default(EditorSettings, 'editor_steps'))} (`ETCHR_EDITOR_STEPS`)",
        f"{fmt(default(EditorSettings, 'editor_guidance'))} (`ETCHR_EDITOR_GUIDANCE`)",
        f"{fmt(default(VerifierSettings, 'verifier_judge_max_tokens'))} (`ETCHR_VERIFIER_JUDGE_MAX_TOKENS`)",
        f"{fmt(default(VerifierSettings, 'verifier_max_tokens'))} (`ETCHR_VERIFIER_MAX_TOKENS`)",
        f"{fmt(default(VerifierSettings, 'verifier_temperature'))} (`ETCHR_VERIFIER_TEMPERATURE`)",
        f"{fmt(default(RewardSettings, 'reward_judge_temperature'))} (`ETCHR_REWARD_JUDGE_TEMPERATURE`)",
        f"{fmt(default(RewardSettings, 'reward_temperature'))} (`ETCHR_REWARD_TEMPERATURE`)",
        f"{fmt(default(RewardSettings, 'reward_judge_max_tokens'))} (`ETCHR_REWARD_JUDGE_MAX_TOKENS`)",
        f"{fmt(default(RewardSettings, 'reward_max_tokens'))} (`ETCHR_REWARD_MAX_TOKENS`)",
        f"(`ETCHR_REWARD_CORRECTNESS_IMAGES` = `{default(RewardSettings, 'reward_correctness_images')}`)",
        f"{default(RewardRequest, 'k')} (request `k`; `etchr train rl --k`)",
        f"{fmt(default(RewardRequest, 'alpha'))} (request `alpha`; `RLConfig.reward_alpha`)",
        f"`{default(RewardRequest, 'advantage')}` (request `advantage`",
        f"{filter_k} sampled at {fmt(default(RewardSettings, 'reward_temperature'))} per clause "
        "(request `k`; `etchr train filter --k`)",
        f"{cli_default(cli.data_mix, 'per_family'):,} per family drawn by `etchr data mix` (`--per-family`",
        f"{cli_default(cli.train_rl, 'group_size')} (`--group-size`)",
        f"{rl_rank} / {fmt(rl_alpha)} (`--rank`, `--alpha`)",
        f"{fmt(cli_default(cli.train_rl, 'clip_range'))} (`--clip-range`)",
        f"{round(fraction * 100)} % (`--timestep-fraction` {fmt(fraction)})",
        f"{fmt(cli_default(cli.train_rl, 'guidance_scale'))} (`--guidance-scale`)",
        "one start noise per group, the group's first rollout seed's, and the SDE noise per rollout "
        "(`--shared-noise`)"
        if cli_default(cli.train_rl, "shared_noise")
        else "start noise of its own seed (`--no-shared-noise`)",
        f"(`--reward-image` = `{cli_default(cli.train_rl, 'reward_image')}`)",
        f"{cli_default(cli.train_rl, 'sample_steps')} steps (`--sample-steps`), "
        f"η {fmt(cli_default(cli.train_rl, 'eta'))} (`--eta`)",
        f"{cli_default(cli.train_sft, 'rank')} (`--rank`), alpha = rank",
        "its 1 MP budget, aspect kept, sides multiples of 16 (`--resolution` unset: "
        "`ETCHR_EDITOR_MAX_MODEL_PIXELS`)"
        if cli_default(cli.train_sft, "resolution") is None
        else f"{cli_default(cli.train_sft, 'resolution')}² budget (`--resolution`)",
        "every Linear layer of the DiT blocks, feed-forward included (`--targets`)"
        if default(SFTConfig, "targets") == DIT_BLOCK_TARGETS
        else "(`--targets`)",
    ]


@pytest.mark.parametrize("fragment", expected_fragments())
def test_recipe_states_the_current_default(fragment: str) -> None:
    assert fragment in RECIPE.read_text(encoding="utf-8"), fragment


def test_the_layers_agree_where_the_page_gives_one_value() -> None:
    """One value per knob on the page: the CLI, the trainer configs and the request models must agree."""
    assert default(RLConfig, "k") == cli_default(cli.train_rl, "k") == default(RewardRequest, "k")
    assert default(RLConfig, "reward_alpha") == default(RewardRequest, "alpha")
    for field in ("group_size", "rank", "alpha", "clip_range", "timestep_fraction", "sample_steps", "eta"):
        assert default(RLConfig, field) == cli_default(cli.train_rl, field), field
    for field in ("guidance_scale", "reward_image", "shared_noise"):  # rollouts, as the release samples them
        assert default(RLConfig, field) == cli_default(cli.train_rl, field), field
    assert default(SFTConfig, "rank") == cli_default(cli.train_sft, "rank")
    assert default(SFTConfig, "resolution") == cli_default(cli.train_sft, "resolution")
    assert default(SFTConfig, "alpha") is None  # alpha = rank
    # `etchr train filter` leaves k to the library (None), whose default is the service's
    assert cli_default(cli.train_filter, "k") is None and default(FilterRequest, "k") == DEFAULT_K
    assert default(EditorSettings, "editor_max_model_pixels") == 1024 * 1024  # "a 1 MP budget"
