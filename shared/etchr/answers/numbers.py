"""Numbers: the value a text is or states, and the numeric rule (ChartQA's relaxed accuracy, years exact)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType

from etchr.answers.extraction import clean
from etchr.answers.scorers import Match, match_exact, normalize_answer

__all__ = ["DEFAULT_REL_TOL", "match_numeric", "parse_number"]

_NUMBER = re.compile(
    r"""^(?P<s1>[-+−])?\s*(?P<cur>[$€£¥₹])?\s*(?P<s2>[-+−])?\s*
    (?:(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
      |(?P<frac>\d+)\s*/\s*(?P<den>\d+))
    \s*(?:%|\s+percent)?$""",
    re.VERBOSE,
)
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.,])[-−]?[$€£¥₹]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?|\.\d+)"
)
_SMALL_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
)
_TENS_WORDS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS: Mapping[str, float] = MappingProxyType(
    {word: float(10 * i) for i, word in enumerate(_TENS_WORDS.split()) if i > 1}
    | {word: float(i) for i, word in enumerate(_SMALL_NUMBER_WORDS.split())}
    | {"hundred": 100.0}
)
_YEAR = re.compile(r"^\d{4}$")


DEFAULT_REL_TOL = 0.05  # ChartQA's relaxed accuracy


def parse_number(text: str) -> float | None:
    """The number a text *is* ("1,234.5", "12%", "-3", "$4.50", "3/4", "1e3"), else ``None``.

    Strict on purpose: "3 cats" is not a number, so answer routing never mistakes a phrase for a value.
    A percent sign is dropped, not divided out ("12%" is 12); the numeric rule then also tries the
    fraction reading (0.12), since charts and golds write percentages both ways.
    """
    cleaned = clean(text.strip())
    match = _NUMBER.match(cleaned)
    if match is None or (match.group("s1") and match.group("s2")):
        return None
    negative = (match.group("s1") or match.group("s2") or "") in ("-", "−")
    if match.group("num") is not None:
        value = float(match.group("num").replace(",", ""))
    else:
        denominator = int(match.group("den"))
        if denominator == 0:
            return None
        value = int(match.group("frac")) / denominator
    if not math.isfinite(value):
        return None
    return -value if negative else value


def _number_in_prediction(text: str) -> float | None:
    """The one value a prediction states: the whole text, a number word, or the single number in it."""
    value = parse_number(text)
    if value is not None:
        return value
    word = normalize_answer(text)
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    values = {parse_number(m.group(0)) for m in _NUMBER_IN_TEXT.finditer(text)} - {None}
    return values.pop() if len(values) == 1 else None


def _percent_readings(value: float, text: str) -> tuple[float, ...]:
    """A value written with a percent sign may mean itself or a fraction: "50%" is 50 or 0.5."""
    return (value, value / 100) if "%" in text or "percent" in text.lower() else (value,)


def match_numeric(predicted: str, expected: str, rel_tol: float) -> Match:
    gold = parse_number(expected)
    if gold is None:
        return match_exact(predicted, expected)
    value = _number_in_prediction(predicted)
    if _YEAR.match(expected) and 1000 <= gold <= 2100:
        return Match(value is not None and value == gold, "year", predicted, expected)
    if value is None:
        return Match(False, "numeric", predicted, expected)
    correct = any(
        _within(pred, want, rel_tol)
        for pred in _percent_readings(value, predicted)
        for want in _percent_readings(gold, expected)
    )
    return Match(correct, "numeric", predicted, expected)


def _within(value: float, gold: float, rel_tol: float) -> bool:
    """ChartQA relaxed accuracy; a zero gold needs an exact zero (no relative band exists around it)."""
    if gold == 0:
        return value == 0
    # A relative epsilon keeps the boundary inclusive despite rounding (0.05 * 100 == 5.000000000000001).
    return abs(value - gold) <= rel_tol * abs(gold) * (1 + 1e-9)
