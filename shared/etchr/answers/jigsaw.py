"""Jigsaw: the predicted permutation of pieces must equal the expected one (numbered from 0 or from 1)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etchr.answers.extraction import route_candidate
from etchr.answers.scorers import Match

__all__ = ["match_jigsaw"]


def _parse_permutation(text: str, size: int | None = None) -> list[int] | None:
    tokens = re.findall(r"\d+", text)
    if size is not None and 1 < size <= 10 and len(tokens) == 1 and len(tokens[0]) == size:
        tokens = list(tokens[0])  # "2013" for a 2x2 puzzle
    return [int(token) for token in tokens] or None


def _is_permutation(values: list[int]) -> bool:
    """Each piece exactly once, numbered from 0 or from 1."""
    return sorted(values) in (list(range(len(values))), list(range(1, len(values) + 1)))


def match_jigsaw(
    text: str, predicted: str, source: str, expected: str, meta: Mapping[str, Any] | None
) -> Match:
    meta = meta or {}
    size = None
    if "rows" in meta or "cols" in meta:
        try:
            size = int(meta["rows"]) * int(meta["cols"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("meta 'rows' and 'cols' must both be integers") from exc
    gold = _parse_permutation(expected, size)
    if gold is None and isinstance(meta.get("permutation"), list | tuple):
        gold = [int(v) for v in meta["permutation"]]
    if gold is None or (size is not None and len(gold) != size) or not _is_permutation(gold):
        raise ValueError(
            f"jigsaw: expected answer {expected!r} is not a permutation of {size or 'the'} pieces"
        )
    predicted = route_candidate(text, predicted, source, _parse_permutation)
    return Match(_parse_permutation(predicted, len(gold)) == gold, "jigsaw", predicted, expected)
