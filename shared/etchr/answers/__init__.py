"""Final-answer extraction and answer matching: the one answer matcher (docs/answers.md).

The verifier's ``answer`` field, the reward service's R_guid, the Eq. 1 data filter and the Pass@1 harness all
decide "did U answer correctly?". If each did it its own way, a reward could disagree with the evaluation it
is meant to improve, so every caller goes through :func:`extract_final_answer` and :func:`match_answer`.

Two principles hold throughout:

- A bad *prediction* is never an exception: it is simply not correct. A bad *ground truth* (malformed
  ``meta``, an unparseable expected permutation) raises :class:`ValueError`, because scoring it silently as
  0 would poison rewards and tables without anyone noticing.
- ``Match.correct is None`` only when the rules cannot decide (an open answer, or ``scorer="judge"``);
  that is the one case the caller spends an LLM-judge call on.

One module per concern: :mod:`~etchr.answers.extraction` (the final answer), :mod:`~etchr.answers.options`
(option letters), :mod:`~etchr.answers.numbers`, :mod:`~etchr.answers.routes` (grid routes),
:mod:`~etchr.answers.jigsaw`; :mod:`~etchr.answers.scorers` holds what they share. :func:`match_answer`,
here, routes a row to its rule. Rule choices and examples are in docs/answers.md; the open-answer judge's
prompt is :func:`etchr.prompts.judge_prompt_for_open_answer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from etchr.answers.extraction import explicit_final_answer, extract, extract_final_answer
from etchr.answers.jigsaw import match_jigsaw
from etchr.answers.numbers import DEFAULT_REL_TOL, match_numeric, parse_number
from etchr.answers.options import EXPECTED_OPTION, extract_option_letter, match_option
from etchr.answers.routes import match_route
from etchr.answers.scorers import Match, Scorer, match_exact, normalize_answer

__all__ = [
    "Match",
    "Scorer",
    "explicit_final_answer",
    "extract_final_answer",
    "extract_option_letter",
    "match_answer",
    "normalize_answer",
    "parse_number",
]

_OPEN_ANSWER_MIN_WORDS = 4


def _route_auto(expected: str, meta: Mapping[str, Any] | None) -> Scorer:
    meta = meta or {}
    if "map" in meta:
        return Scorer.FROZENLAKE
    if "grid" in meta and "start" in meta and "goal" in meta:
        return Scorer.PATH
    if "rows" in meta and "cols" in meta:
        return Scorer.JIGSAW
    if "choices" in meta or EXPECTED_OPTION.match(expected):
        return Scorer.OPTION
    if parse_number(expected) is not None:
        return Scorer.NUMERIC
    return Scorer.EXACT


def match_answer(
    prediction: str,
    expected: str,
    *,
    scorer: str | Scorer | None = "auto",
    meta: Mapping[str, Any] | None = None,
    rel_tol: float | None = None,
) -> Match:
    """Whether the raw model text ``prediction`` answers ``expected`` correctly, by the named rule.

    ``scorer`` and ``meta`` are the manifest row's fields (docs/data.md); ``None`` means ``auto``. The final
    answer is extracted inside, so callers pass the raw response. ``rel_tol`` is the numeric rule's relative
    band; ``None`` takes the row's ``meta.rel_tol`` (a benchmark graded on exact values sets 0), else 5 %.
    Raises :class:`ValueError` for an unknown scorer, an empty expected answer or malformed ground truth,
    never for a bad prediction.
    """
    try:
        kind = Scorer(str(scorer or "auto").strip().lower())
    except ValueError:
        raise ValueError(f"unknown scorer {scorer!r}; valid: {', '.join(s.value for s in Scorer)}") from None
    if rel_tol is None:
        rel_tol = (meta or {}).get("rel_tol", DEFAULT_REL_TOL)
        if isinstance(rel_tol, bool) or not isinstance(rel_tol, int | float) or not math.isfinite(rel_tol):
            raise ValueError("meta 'rel_tol' must be a number >= 0")
    if rel_tol < 0:
        raise ValueError("rel_tol must be >= 0")
    expected = expected.strip()
    auto = kind is Scorer.AUTO
    if auto:
        kind = _route_auto(expected, meta)
    if not expected and kind not in (Scorer.FROZENLAKE, Scorer.PATH):
        raise ValueError("the expected answer is empty")  # only a map or grid can stand in for it
    predicted, source = extract(prediction)
    if not predicted:
        return Match(False, "empty", "", expected)
    if kind is Scorer.JUDGE:
        return Match(None, "judge", predicted, expected)
    if kind is Scorer.OPTION:
        return match_option(prediction, predicted, expected, meta)
    if kind is Scorer.NUMERIC:
        return match_numeric(predicted, expected, rel_tol)
    if kind in (Scorer.FROZENLAKE, Scorer.PATH):
        return match_route(prediction, predicted, source, expected, meta, kind)
    if kind is Scorer.JIGSAW:
        return match_jigsaw(prediction, predicted, source, expected, meta)
    result = match_exact(predicted, expected)
    if auto and not result.correct and len(normalize_answer(expected).split()) >= _OPEN_ANSWER_MIN_WORDS:
        return Match(None, "open", predicted, expected)
    return result
