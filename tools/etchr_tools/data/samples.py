"""What a corpus generator returns, and the pieces every generator writes its questions with.

A generator (``maze``, ``frozenlake``, ``jigsaw``, ``bbox``) turns a seeded ``random.Random`` into one
:class:`Sample`; ``build`` numbers the samples and writes the manifest. The helpers here are the vocabulary
the generators and the importers share: option ranges, question forms and multiple-choice questions with
their ``(A) …`` option lines. This module imports no generator, so every generator can import it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from etchr.protocol.edit import EditTask

__all__ = [
    "OPTION_LETTERS",
    "QuestionForm",
    "Sample",
    "int_range",
    "mc_question",
    "pick_form",
    "with_options",
]

QuestionForm = Literal["open", "mc", "mixed"]
OPTION_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Sample:
    """One generated example before it is given an id and file names."""

    task: EditTask
    question: str
    answer: str
    scorer: str
    meta: dict[str, Any]
    image: Image.Image
    edited: Image.Image
    source_id: str | None = None  # bbox keeps the user's id ...
    source_path: Path | None = None  # ... and copies the user's image file as it is


def int_range(value: int | Sequence[int], name: str, *, low: int = 1) -> tuple[int, int]:
    """An inclusive ``(min, max)`` from an int or a pair, so options accept both ``9`` and ``(9, 15)``."""
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a (min, max) pair, got {value!r}")
    if pair[0] < low or pair[0] > pair[1]:
        raise ValueError(f"{name} must satisfy {low} <= min <= max, got {pair}")
    return pair


def pick_form(rng: random.Random, form: QuestionForm) -> Literal["open", "mc"]:
    """The question form of one row; "mixed" draws open or multiple choice with equal odds."""
    if form not in ("open", "mc", "mixed"):
        raise ValueError(f"question_form must be 'open', 'mc' or 'mixed', got {form!r}")
    if form == "mixed":
        return "open" if rng.random() < 0.5 else "mc"
    return form


def with_options(stem: str, choices: Mapping[str, str]) -> str:
    """The question as a multiple-choice one is asked: the stem, then one ``(A) text`` line per option."""
    return "\n".join([stem, *(f"({letter}) {text}" for letter, text in choices.items())])


def mc_question(rng: random.Random, stem: str, correct: str, distractors: Sequence[str]) -> tuple[str, str]:
    """A multiple-choice question and its answer letter: the correct option at a random position."""
    options = [correct, *distractors]
    if len(set(options)) != len(options) or len(options) > len(OPTION_LETTERS):
        raise ValueError(f"options must be distinct and at most {len(OPTION_LETTERS)}: {options!r}")
    rng.shuffle(options)
    question = with_options(stem, dict(zip(OPTION_LETTERS, options, strict=False)))
    return f"{question}\nAnswer with the option letter.", OPTION_LETTERS[options.index(correct)]
