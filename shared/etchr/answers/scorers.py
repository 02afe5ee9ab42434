"""What every answer rule shares: the scorer names, the :class:`Match` verdict and the exact-text rule.

The exact rule (:func:`match_exact`, over :func:`normalize_answer`) is also what the option and numeric rules
fall back to when the ground truth is not an option or a number.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from etchr.answers.extraction import clean

__all__ = ["Match", "Scorer", "match_exact", "normalize_answer"]


class Scorer(StrEnum):
    """How an answer is checked; the manifest's ``scorer`` field (docs/data.md) names one of these."""

    OPTION = "option"
    NUMERIC = "numeric"
    EXACT = "exact"
    FROZENLAKE = "frozenlake"
    JIGSAW = "jigsaw"
    PATH = "path"
    JUDGE = "judge"
    AUTO = "auto"


@dataclass(frozen=True)
class Match:
    """The verdict of one answer check.

    ``correct`` is ``None`` only when the rules cannot decide and an LLM judge must; ``rule`` names the rule
    that decided (see docs/answers.md), ``predicted`` is what was read from the model's text and
    ``expected`` the ground truth as given (trimmed).
    """

    correct: bool | None
    rule: str
    predicted: str
    expected: str


_PUNCT = re.compile(r"(?P<keep>(?<=\d)[.,/:](?=\d)|(?<!\w)[-+](?=\d))|[^\w\s]|_")
_ARTICLES = frozenset({"a", "an", "the"})
_SYNONYMS: Mapping[str, str] = MappingProxyType({"true": "yes", "false": "no"})


def normalize_answer(text: str) -> str:
    """Case-, whitespace-, punctuation- and article-insensitive form; "true"/"false" read as "yes"/"no".

    Decimal points, thousands commas and fraction slashes between digits, and a sign before a digit, are
    kept, so "-3" never equals "3" and "3.5" never equals "35".
    """
    text = unicodedata.normalize("NFKC", clean(text)).casefold()
    text = _PUNCT.sub(lambda m: m.group(0) if m.group("keep") else " ", text)
    return " ".join(_SYNONYMS.get(word, word) for word in text.split() if word not in _ARTICLES)


def match_exact(predicted: str, expected: str) -> Match:
    gold, pred = normalize_answer(expected), normalize_answer(predicted)
    if gold in ("yes", "no") and pred.split()[:1] in (["yes"], ["no"]):
        return Match(pred.split()[0] == gold, "yes_no", predicted, expected)
    return Match(bool(gold) and pred == gold, "exact", predicted, expected)
