"""Reward combination, win rates and group normalisation against hand-computed values."""

from __future__ import annotations

import math

import pytest

from etchr_reward.advantages import combine, group_advantages, normalise, win_rates

R5 = math.sqrt(5)
R2 = math.sqrt(2)
R6 = math.sqrt(6)


@pytest.mark.parametrize(
    ("guidance", "correctness", "alpha", "expected"),
    [
        (0.75, 0.25, 0.0, 0.25),  # correctness alone
        (0.75, 0.25, 1.0, 0.75),  # guidance alone
        (0.75, 0.25, 0.3, 0.4),  # 0.3·0.75 + 0.7·0.25 = 0.225 + 0.175
        (0.5, 1.0, 0.5, 0.75),  # the paper's α
        (0.0, 0.0, 0.5, 0.0),
        (1.0, 1.0, 0.3, 1.0),
    ],
)
def test_combine(guidance: float, correctness: float, alpha: float, expected: float) -> None:
    assert combine(guidance, correctness, alpha) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("alpha", [-0.1, 1.1])
def test_combine_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        combine(0.5, 0.5, alpha)


# (rewards, win rates, pref-grpo advantages), all by hand.
WIN_RATE_CASES = [
    pytest.param([0.5, 0.5, 0.5, 0.5], [0.5] * 4, [0.0] * 4, id="all-equal"),
    pytest.param([0.0] * 8, [0.5] * 8, [0.0] * 8, id="all-zero-G8"),
    # w = [0, 1/3, 2/3, 1]; mean 1/2; deviations ±1/2, ±1/6; var = (2/4 + 2/36)/4 = 5/36; std = √5/6.
    pytest.param(
        [0.1, 0.2, 0.3, 0.4], [0, 1 / 3, 2 / 3, 1], [-3 / R5, -1 / R5, 1 / R5, 3 / R5], id="increasing"
    ),
    pytest.param(
        [0.4, 0.1, 0.3, 0.2], [1, 0, 2 / 3, 1 / 3], [3 / R5, -3 / R5, 1 / R5, -1 / R5], id="shuffled"
    ),
    # Middle tie: w1 = (1 + 0.5 + 0)/3 = 1/2; w = [0, ½, ½, 1]; var = (¼ + ¼)/4 = 1/8; std = 1/(2√2).
    pytest.param([0.0, 0.5, 0.5, 1.0], [0, 0.5, 0.5, 1], [-R2, 0, 0, R2], id="tie-in-middle"),
    # Tie at the top: w0 = 0, w1..3 = (1 + ½ + ½)/3 = 2/3; mean 1/2; dev [-1/2, 1/6 ×3];
    # var = (1/4 + 3/36)/4 = 1/12; std = 1/√12.
    pytest.param(
        [0.25, 0.75, 0.75, 0.75],
        [0, 2 / 3, 2 / 3, 2 / 3],
        [-0.5 * math.sqrt(12), *[math.sqrt(12) / 6] * 3],
        id="tie-at-top",
    ),
    pytest.param([0.25, 0.75], [0, 1], [-1, 1], id="G2"),  # mean 1/2, std 1/2
    pytest.param([0.75, 0.75], [0.5, 0.5], [0, 0], id="G2-tie"),
    pytest.param([0.3], [0.5], [0.0], id="G1"),
]


@pytest.mark.parametrize(("rewards", "rates", "advantages"), WIN_RATE_CASES)
def test_pref_grpo_by_hand(rewards: list[float], rates: list[float], advantages: list[float]) -> None:
    assert win_rates(rewards) == pytest.approx(rates, abs=1e-12)
    got_rates, got_advantages = group_advantages(rewards, "pref-grpo")
    assert got_rates == pytest.approx(rates, abs=1e-12)
    # eps = 1e-8 in the denominator moves results by ~1e-8 relative.
    assert got_advantages == pytest.approx(advantages, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    ("rewards", "advantages"),
    [
        # mean 1/2; var = (1/4 + 0 + 1/4)/3 = 1/6 (the sample std would give [-1, 0, 1]).
        pytest.param([0.0, 0.5, 1.0], [-R6 / 2, 0.0, R6 / 2], id="three"),
        # mean 0.5, std 0.25 → ±1 (no pairwise flattening: magnitudes matter in GRPO).
        pytest.param([0.25, 0.75], [-1.0, 1.0], id="G2"),
        # mean 0.25; dev [-0.25, -0.25, -0.25, 0.75]; var = (3/16 + 9/16)/4 = 3/16; std = √3/4.
        pytest.param([0.0, 0.0, 0.0, 1.0], [-1 / math.sqrt(3)] * 3 + [math.sqrt(3)], id="one-winner"),
        pytest.param([0.6, 0.6, 0.6], [0.0] * 3, id="all-equal"),
        pytest.param([0.7], [0.0], id="G1"),
    ],
)
def test_grpo_by_hand(rewards: list[float], advantages: list[float]) -> None:
    rates, got = group_advantages(rewards, "grpo")
    assert rates is None
    assert got == pytest.approx(advantages, rel=1e-6, abs=1e-12)


def test_g1_is_neutral_in_every_mode() -> None:
    assert win_rates([0.9]) == [0.5]
    assert group_advantages([0.9], "pref-grpo") == ([0.5], [0.0])
    assert group_advantages([0.9], "grpo") == (None, [0.0])
    assert group_advantages([0.9], "none") == (None, None)


def test_none_mode_returns_nothing() -> None:
    assert group_advantages([0.0, 0.5, 1.0], "none") == (None, None)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="advantage mode"):
        group_advantages([0.0, 1.0], "ppo")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_rewards_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        win_rates([0.5, bad])
    with pytest.raises(ValueError, match="finite"):
        group_advantages([0.5, bad], "grpo")


def test_float_noise_is_a_tie() -> None:
    assert 0.1 + 0.2 != 0.3  # the artefact this guards against
    assert win_rates([0.1 + 0.2, 0.3]) == [0.5, 0.5]
    assert group_advantages([0.1 + 0.2, 0.3], "pref-grpo") == ([0.5, 0.5], [0.0, 0.0])
    assert group_advantages([0.1 + 0.2, 0.3], "grpo") == (None, [0.0, 0.0])


def test_rewards_equal_in_exact_arithmetic_tie() -> None:
    # k = 5, α = 0.5: (2/5, 1/5) and (3/5, 0) both give R = 3/10 exactly, but not as floats.
    a = combine(0.2, 0.4, 0.5)
    b = combine(0.0, 0.6, 0.5)
    c = combine(1.0, 1.0, 0.5)
    assert a != b
    assert win_rates([a, b, c]) == [0.25, 0.25, 1.0]
    _, advantages = group_advantages([a, b, c], "pref-grpo")
    assert advantages is not None
    assert advantages[0] == advantages[1]


def test_real_differences_are_not_ties() -> None:
    # The smallest gap a real reward can have is far above the rounding.
    assert win_rates([0.5, 0.5 + 1 / 320]) == [0.0, 1.0]


@pytest.mark.parametrize(
    "rewards",
    [
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.0],
        [0.1, 0.9],
        [0.3, 0.3, 0.3, 0.8],
        [0.125, 0.375, 0.5, 0.5, 0.625, 0.875, 0.875, 1.0],
    ],
)
@pytest.mark.parametrize("mode", ["pref-grpo", "grpo"])
def test_advantages_are_centred_with_unit_population_std(rewards: list[float], mode: str) -> None:
    _, advantages = group_advantages(rewards, mode)  # type: ignore[arg-type]
    assert advantages is not None
    n = len(advantages)
    mean = sum(advantages) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in advantages) / n)
    assert mean == pytest.approx(0.0, abs=1e-9)
    assert std == pytest.approx(1.0, rel=1e-6)


def test_normalise_edge_cases() -> None:
    assert normalise([]) == []
    assert normalise([3.0]) == [0.0]
    assert normalise([2.0, 2.0]) == [0.0, 0.0]
    assert normalise([1.0, 3.0]) == pytest.approx([-1.0, 1.0], rel=1e-6)
    # eps keeps a near-constant group finite.
    assert all(math.isfinite(v) for v in normalise([1.0, 1.0 + 1e-15], eps=1e-8))
