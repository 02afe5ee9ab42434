"""Reward combination and group-relative advantages (Stage II, docs/training.md): pure math, no I/O.

Within a rollout group of G edits of one (I, q):

- ``combine``: R = α·R_guid + (1−α)·R_corr.
- ``win_rates`` (Pref-GRPO): w_i = 1/(G−1) Σ_{j≠i} s_ij, s_ij = 1 if r_i > r_j, 0.5 if equal, 0 otherwise.
- ``normalise``: A_i = (v_i − mean(v)) / (std(v) + ε) with the population std (ddof 0), as the paper writes.

Rewards are fractions of k decodings mixed with α, so two edits that earned *the same* reward can differ in
the last bit (``0.5·0.2 + 0.5·0.4 == 0.30000000000000004`` but ``0.5·0 + 0.5·0.6 == 0.3``). Comparing raw
floats would turn such a tie into a win, i.e. invent a preference signal the judges never gave. Rewards are
therefore compared after rounding to ``TIE_DECIMALS`` places: far above float noise (~1e-16) and far below
any real reward difference (for α = p/q a multiple of 1/(q·k), k ≤ 32, so ≳ 1e-6 for any α written with a
few decimals). Rounding, unlike an ``abs(a − b) < tol`` test, is an equivalence relation, so ties stay
transitive and win rates consistent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import get_args

from etchr.protocol.reward import AdvantageMode

__all__ = ["TIE_DECIMALS", "combine", "group_advantages", "normalise", "win_rates"]

TIE_DECIMALS = 12


def combine(guidance: float, correctness: float, alpha: float) -> float:
    """R = α·R_guid + (1−α)·R_corr; α = 1 is guidance alone, α = 0 correctness alone."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * guidance + (1.0 - alpha) * correctness


def _tie_keys(values: Sequence[float]) -> list[float]:
    """Values rounded so that rewards equal in exact arithmetic compare equal (see the module docstring)."""
    keys = []
    for value in values:
        if not math.isfinite(value):
            # A NaN compares unequal to everything and would silently lose every pairing.
            raise ValueError(f"rewards must be finite, got {value}")
        keys.append(round(value, TIE_DECIMALS))
    return keys


def win_rates(rewards: Sequence[float]) -> list[float]:
    """Each reward's pairwise win rate against the rest of its group; a tie counts one half.

    G = 1 gives ``[0.5]``: with no opponent the edit is scored as a tie with itself, the neutral value, so
    it carries no preference signal (its advantage is 0 either way).
    """
    keys = _tie_keys(rewards)
    group = len(keys)
    if group == 1:
        return [0.5]
    rates = []
    for i, r_i in enumerate(keys):
        score = 0.0
        for j, r_j in enumerate(keys):
            if j != i:
                score += 1.0 if r_i > r_j else 0.5 if r_i == r_j else 0.0
        rates.append(score / (group - 1))
    return rates


def normalise(values: Sequence[float], eps: float = 1e-8) -> list[float]:
    """(v − mean) / (std + eps) with the population std (ddof 0); G = 1 gives ``[0.0]``.

    A group whose values are all equal gives exact zeros (no signal), not eps-scaled rounding residue.
    """
    n = len(values)
    if n == 0:
        return []
    if min(values) == max(values):
        return [0.0] * n
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return [(v - mean) / (std + eps) for v in values]


def group_advantages(
    rewards: Sequence[float], mode: AdvantageMode
) -> tuple[list[float] | None, list[float] | None]:
    """``(win_rates, advantages)`` for one group of rewards under ``mode``.

    - ``"pref-grpo"`` (the paper): win rates, normalised in the group.
    - ``"grpo"``: plain GRPO, rewards normalised in the group; win rates are ``None``. Rewards are rounded
      like win-rate comparisons first, so a group that is tied in exact arithmetic gets zeros, not ±1
      amplified from float noise.
    - ``"none"``: ``(None, None)``; the trainer computes its own advantages from the rewards.
    """
    if mode == "pref-grpo":
        rates = win_rates(rewards)
        return rates, normalise(rates)
    if mode == "grpo":
        return None, normalise(_tie_keys(rewards))
    if mode == "none":
        _tie_keys(rewards)  # same finiteness check as the other modes
        return None, None
    raise ValueError(f"unknown advantage mode {mode!r}; expected one of {get_args(AdvantageMode)}")
