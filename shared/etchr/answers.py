"""Final-answer extraction and answer matching: the one answer matcher (SPEC §6).

The verifier's ``answer`` field, the reward service's R_guid, the Eq. 1 data filter and the Pass@1 harness all
decide "did U answer correctly?". If each did it its own way, a reward could disagree with the evaluation it
is meant to improve, so every caller goes through :func:`extract_final_answer` and :func:`match_answer`.

Two principles hold throughout:

- A bad *prediction* is never an exception: it is simply not correct. A bad *ground truth* (malformed
  ``meta``, an unparseable expected permutation) raises :class:`ValueError`, because scoring it silently as
  0 would poison rewards and tables without anyone noticing.
- ``Match.correct is None`` only when the rules cannot decide (an open answer, or ``scorer="judge"``);
  that is the one case the caller spends an LLM-judge call on.

Rule choices and examples are in docs/answers.md.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from etchr.tasks import JUDGE_REPLY_CONVENTION
from etchr.thinking import strip_thinking

__all__ = [
    "Match",
    "Scorer",
    "explicit_final_answer",
    "extract_final_answer",
    "extract_option_letter",
    "judge_prompt_for_open_answer",
    "match_answer",
    "normalize_answer",
    "parse_number",
]


class Scorer(StrEnum):
    """How an answer is checked; the manifest's ``scorer`` field (SPEC §9) names one of these."""

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


# -------------------------------------------------------------------------------------------- extraction

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_WRAP = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{(.*)\}$", re.DOTALL)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_ANSWER_MARKER = re.compile(
    r"\b(?:final\s+|correct\s+|best\s+)?answer\b\s*(?:(?:is|would\s+be|should\s+be|will\s+be)\b\s*[:：]?|[:：])"
    r"|答案\s*(?:是|[:：])",
    re.IGNORECASE,
)
_ANSWER_HEADING = re.compile(r"^[#>\s]*(?:the\s+|my\s+)?(?:final\s+|correct\s+)?answer\s*[:：]?\s*$", re.I)
_LONE_LETTER_LINE = re.compile(r"^[(\[]?\s*([A-H])\s*[)\]]?\s*[.:]?$")
_FENCE_ONLY = re.compile(r"^[`~*_#>\-=\s]*$")
_BOLD = re.compile(r"\*\*|__|`")


def _clean(text: str) -> str:
    """Trim an extracted answer: markdown bold/italics and backticks, ``$…$`` math, trailing periods."""
    text = _BOLD.sub("", text).strip().strip("*_").strip()
    if len(text) > 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    if text.startswith("\\(") and text.endswith("\\)"):
        text = text[2:-2].strip()
    return text.rstrip(".。 ").strip()


def _unlatex(text: str) -> str:
    """Unwrap what models put in ``\\boxed{}``: ``\\text{B}``, ``\\frac{3}{4}``, ``12\\%``, ``1{,}234``."""
    text = text.strip()
    while (wrapped := _LATEX_WRAP.match(text)) is not None:
        text = wrapped.group(1).strip()
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    return text.replace("{,}", ",").replace("\\,", "").replace("\\%", "%").replace("\\$", "$").strip()


def _last_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{…}``/``\\fbox{…}``, braces balanced (nested ones kept)."""
    found: str | None = None
    for start in _BOX_START.finditer(text):
        depth, i = 1, start.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0 and text[start.end() : i - 1].strip():
            found = text[start.end() : i - 1]
    return found


def _answer_line(lines: list[str]) -> str | None:
    """Text after the last "Answer:" / "Final answer:" / "The answer is" marker (or on the line after it)."""
    for index in range(len(lines) - 1, -1, -1):
        line = _BOLD.sub("", lines[index])
        markers = list(_ANSWER_MARKER.finditer(line))
        if markers:
            rest = line[markers[-1].end() :].strip()
        elif _ANSWER_HEADING.match(line):
            rest = ""
        else:
            continue
        if not _FENCE_ONLY.match(rest):
            return rest
        following = next((nxt for nxt in lines[index + 1 :] if not _FENCE_ONLY.match(nxt)), None)
        if following is not None:
            return following
    return None


def _extract(text: str) -> tuple[str, str]:
    """The final answer and where it came from: boxed, answer_line, option_line, last_line or empty."""
    body = strip_thinking(text)
    boxed = _last_boxed(body)
    if boxed is not None:
        return _clean(_unlatex(boxed)), "boxed"
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    stated = _answer_line(lines)
    if stated is not None and _clean(stated):
        return _clean(stated), "answer_line"
    for line in reversed(lines):
        if _LONE_LETTER_LINE.match(_clean(line)):
            return _clean(line), "option_line"
    for line in reversed(lines):
        if not _FENCE_ONLY.match(line):
            return _clean(line), "last_line"
    return "", "empty"


def extract_final_answer(text: str) -> str:
    """The model's final answer, read in a fixed order so every service agrees on it.

    Reasoning blocks are dropped first, then: the last ``\\boxed{…}``/``\\fbox{…}``; else the last explicit
    answer line ("Answer:", "Final answer:", "The answer is …"); else the last line that is a lone option
    letter ("(B)", "B.", "B"); else the last non-empty line. The result is trimmed, with markdown
    bold/backticks and a trailing period removed; empty text gives "".
    """
    return _extract(text)[0]


def explicit_final_answer(text: str) -> str | None:
    """The final answer only when the text states one (a ``\\boxed{}`` or an answer line), else ``None``.

    What a reply cut at max_tokens still counts for: its last line is wherever the cut fell, so only an
    answer the model stated before the cut is an answer.
    """
    answer, source = _extract(text)
    return answer if source in ("boxed", "answer_line") and answer else None


# -------------------------------------------------------------------------------------------- option letters

_WHOLE_LETTER = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:]?$")
_LEADING_LABEL = re.compile(r"^(?:[(\[]\s*([A-Z])\s*[)\]]|([A-Z])[).:](?=\s|$))")
_KEYWORD_LETTER = re.compile(
    r"(?i:\b(?:answer|option|choice|letter))\s*(?i:is|would\s+be|should\s+be|:|：)?\s*"
    r"(?i:(?:option|choice)\s+)?([(\[])?\s*([A-Za-z])\s*[)\]]?(?![A-Za-z0-9'])"
)
_ENDS_CLAUSE = re.compile(r"\s*(?:[.,;:!?]|$)")
_BRACKETED_LETTER = re.compile(r"[(\[]\s*([A-Z])\s*[)\]]")
_BARE_LETTER = re.compile(r"(?<![A-Za-z0-9'’-])([A-Z])(?![A-Za-z0-9'’])")
_NOT_AFTER_ARTICLE_WORDS = (
    "or and nor vs versus is was seems looks because since but would should could will can might must then "
    "also only too fits matches"
)
_SENTENCE_START = re.compile(r"(?:^|[.!?:\n])[\s*_\"'“(]*$")
_LOWER_WORD_AFTER = re.compile(r"\s+([a-z]+)")
_NOT_AFTER_ARTICLE = frozenset(_NOT_AFTER_ARTICLE_WORDS.split())


def _is_article(text: str, start: int, end: int) -> bool:
    """A capital "A" that starts a sentence and is followed by a lower-case word reads as the article.

    Words an article cannot precede ("A or B", "A is correct") keep it a letter.
    """
    after = _LOWER_WORD_AFTER.match(text, end)
    return (
        text[start:end] == "A"
        and after is not None
        and after.group(1) not in _NOT_AFTER_ARTICLE
        and _SENTENCE_START.search(text[:start]) is not None
    )


def _keyword_letter(text: str, allowed: str) -> str | None:
    """The last letter named explicitly ("answer is B", "Option (C)", "choice: D"), article "A" excluded."""
    found = None
    for match in _KEYWORD_LETTER.finditer(text):
        letter = match.group(2)
        if letter.islower():  # "the answer is b." yes, "the answer is a dog" no
            if _ENDS_CLAUSE.match(text, match.end()) is None:
                continue
            letter = letter.upper()
        if letter not in allowed:
            continue
        if match.group(1) is None and _is_article(text, match.start(2), match.end(2)):
            continue
        found = letter
    return found


def extract_option_letter(text: str, choices: str = "ABCDEFGH") -> str | None:
    """The option letter a text commits to, or ``None`` when it names none or several.

    Strongest signal first: the whole text is a letter ("B", "(b)", "B."); it starts with a labelled letter
    ("(B) red", "B) red", "B. red") and brackets no other; a keyword names it ("Option B", "the answer is
    B", last one wins); exactly one bracketed letter anywhere; exactly one bare capital letter anywhere.
    A capital "A" that starts a sentence and is followed by a lower-case word ("A cat is …", "Answer: A
    cat") is the article, never option A, unless that word cannot follow an article ("A or B", "A is
    right"); two different letters on the weakest tiers ("A or B", "(A) and (C)") are ambiguous.
    """
    allowed = "".join(dict.fromkeys(choices.upper()))
    body = _BOLD.sub("", strip_thinking(text)).strip()
    if not body:
        return None
    whole = _WHOLE_LETTER.match(body.rstrip("."))
    if whole:
        letter = whole.group(1).upper()
        return letter if letter in allowed else None
    bracketed = {m.group(1) for m in _BRACKETED_LETTER.finditer(body)} & set(allowed)
    label = _LEADING_LABEL.match(body)
    leading = label and (label.group(1) or label.group(2))
    if leading and leading in allowed and bracketed <= {leading}:
        return leading
    keyword = _keyword_letter(body, allowed)
    if keyword is not None:
        return keyword
    if bracketed:
        return bracketed.pop() if len(bracketed) == 1 else None
    bare = {
        m.group(1)
        for m in _BARE_LETTER.finditer(body)
        if m.group(1) in allowed and not _is_article(body, m.start(1), m.end(1))
    }
    return bare.pop() if len(bare) == 1 else None


# ------------------------------------------------------------------------------------------------- numbers

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


def parse_number(text: str) -> float | None:
    """The number a text *is* ("1,234.5", "12%", "-3", "$4.50", "3/4", "1e3"), else ``None``.

    Strict on purpose: "3 cats" is not a number, so answer routing never mistakes a phrase for a value.
    A percent sign is dropped, not divided out ("12%" is 12); the numeric rule then also tries the
    fraction reading (0.12), since charts and golds write percentages both ways.
    """
    cleaned = _clean(text.strip())
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


# ----------------------------------------------------------------------------------------------- strings

_PUNCT = re.compile(r"(?P<keep>(?<=\d)[.,/:](?=\d)|(?<!\w)[-+](?=\d))|[^\w\s]|_")
_ARTICLES = frozenset({"a", "an", "the"})
_SYNONYMS: Mapping[str, str] = MappingProxyType({"true": "yes", "false": "no"})
_OPEN_ANSWER_MIN_WORDS = 4
_DEFAULT_REL_TOL = 0.05  # ChartQA's relaxed accuracy


def normalize_answer(text: str) -> str:
    """Case-, whitespace-, punctuation- and article-insensitive form; "true"/"false" read as "yes"/"no".

    Decimal points, thousands commas and fraction slashes between digits, and a sign before a digit, are
    kept, so "-3" never equals "3" and "3.5" never equals "35".
    """
    text = unicodedata.normalize("NFKC", _clean(text)).casefold()
    text = _PUNCT.sub(lambda m: m.group(0) if m.group("keep") else " ", text)
    return " ".join(_SYNONYMS.get(word, word) for word in text.split() if word not in _ARTICLES)


def _match_exact(predicted: str, expected: str) -> Match:
    gold, pred = normalize_answer(expected), normalize_answer(predicted)
    if gold in ("yes", "no") and pred.split()[:1] in (["yes"], ["no"]):
        return Match(pred.split()[0] == gold, "yes_no", predicted, expected)
    return Match(bool(gold) and pred == gold, "exact", predicted, expected)


# ------------------------------------------------------------------------------------------------ options

_EXPECTED_OPTION = re.compile(r"^\s*(?:\(\s*[A-Ha-h]\s*\)|[A-H])\s*\.?\s*$|^\s*\(\s*[A-H]\s*\)\s+\S")
_OPTION_LABEL_PREFIX = re.compile(r"^\s*(?:[(\[]\s*[A-Z]\s*[)\]]|[A-Z][).:])\s*")


def _choices(meta: Mapping[str, Any] | None) -> dict[str, str]:
    raw = (meta or {}).get("choices")
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return {str(key).strip().strip("()").upper(): str(value) for key, value in raw.items()}
    if isinstance(raw, list | tuple):
        return {chr(ord("A") + i): str(value) for i, value in enumerate(raw)}
    raise ValueError("meta 'choices' must map option letters to option texts")


def _expected_letter(expected: str, allowed: str) -> str | None:
    """The gold letter, read only from strong forms ("B", "(B)", "(B) red ball", "B. red ball").

    The weak tiers of :func:`extract_option_letter` are not used: a gold answer "Vitamin C" is a text.
    """
    whole = _WHOLE_LETTER.match(expected)
    if whole:
        return whole.group(1).upper() if whole.group(1).upper() in allowed else None
    label = _LEADING_LABEL.match(expected)
    letter = label and (label.group(1) or label.group(2))
    return letter if letter and letter in allowed else None


def _match_option(text: str, predicted: str, expected: str, meta: Mapping[str, Any] | None) -> Match:
    choices = _choices(meta)
    allowed = "".join(choices) if choices else "ABCDEFGH"
    texts = dict(choices)
    gold = _expected_letter(expected, allowed)
    label = _OPTION_LABEL_PREFIX.match(expected)
    if gold is not None and label and expected[label.end() :].strip():
        texts.setdefault(gold, expected[label.end() :].strip())
    if gold is None:
        by_text = [
            k for k, option in choices.items() if normalize_answer(option) == normalize_answer(expected)
        ]
        if len(by_text) != 1:
            return _match_exact(predicted, expected)
        gold = by_text[0]
    said = normalize_answer(predicted)
    quoted = [k for k, option in texts.items() if said and normalize_answer(option) == said]
    if len(quoted) == 1:
        return Match(quoted[0] == gold, "option_text", predicted, expected)
    letter = extract_option_letter(predicted, allowed)
    if letter is None:  # e.g. "So the correct choice is B, the mug.\n\nHope this helps!"
        letter = _keyword_letter(_BOLD.sub("", strip_thinking(text)), allowed)
    return Match(letter == gold, "option", predicted, expected)


# ------------------------------------------------------------------------------------------------ numeric


def _percent_readings(value: float, text: str) -> tuple[float, ...]:
    """A value written with a percent sign may mean itself or a fraction: "50%" is 50 or 0.5."""
    return (value, value / 100) if "%" in text or "percent" in text.lower() else (value,)


def _match_numeric(predicted: str, expected: str, rel_tol: float) -> Match:
    gold = parse_number(expected)
    if gold is None:
        return _match_exact(predicted, expected)
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


# ------------------------------------------------------------------------------------------- grid routes

_Cell = tuple[int, int]
_MOVES: Mapping[str, _Cell] = MappingProxyType(
    {"l": (0, -1), "r": (0, 1), "u": (-1, 0), "d": (1, 0), "left": (0, -1), "right": (0, 1)}
    | {"up": (-1, 0), "down": (1, 0)}
)
_ARROWS: Mapping[str, _Cell] = MappingProxyType(
    {
        "←": (0, -1),
        "→": (0, 1),
        "↑": (-1, 0),
        "↓": (1, 0),
        "⬅": (0, -1),
        "➡": (0, 1),
        "⬆": (-1, 0),
        "⬇": (1, 0),
    }
)
_FILLER_WORDS = (
    "move moves go then and step steps finally first next path is the answer to sequence action actions "
    "direction directions solution route"
)
_FILLER = frozenset(_FILLER_WORDS.split())
_ROUTE_TOKEN = re.compile(
    r"(?P<word>[a-z]+)|(?P<arrow>[←→↑↓⬅➡⬆⬇])|(?P<sep>[\s,;|/\\\-–—>=.:()\[\]{}'\"`*\ufe0f+])"
)
_COORD = re.compile(r"[(\[]\s*(-?\d+)\s*,\s*(-?\d+)\s*[)\]]")


@dataclass(frozen=True)
class _Board:
    height: int
    width: int
    blocked: frozenset[_Cell]
    start: _Cell
    goal: _Cell

    def inside(self, cell: _Cell) -> bool:
        return 0 <= cell[0] < self.height and 0 <= cell[1] < self.width

    def shortest(self) -> int | None:
        """Length in moves of a shortest start→goal route (BFS), or ``None`` when none exists."""
        seen, queue = {self.start: 0}, deque([self.start])
        while queue:
            cell = queue.popleft()
            if cell == self.goal:
                return seen[cell]
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                nxt = (cell[0] + dr, cell[1] + dc)
                if self.inside(nxt) and nxt not in self.blocked and nxt not in seen:
                    seen[nxt] = seen[cell] + 1
                    queue.append(nxt)
        return None


def _parse_moves(text: str) -> list[_Cell] | None:
    """Moves in letter, word or arrow form with any separators; ``None`` if anything else is in the text.

    Arrows count as moves only when no letter or word moves are present ("R → D" uses → as a separator).
    """
    letters: list[_Cell] = []
    arrows: list[_Cell] = []
    text = unicodedata.normalize("NFC", text).lower()
    pos = 0
    while pos < len(text):
        token = _ROUTE_TOKEN.match(text, pos)
        if token is None:
            return None
        pos = token.end()
        word = token.group("word")
        if word is not None:
            if word in _MOVES:
                letters.append(_MOVES[word])
            elif set(word) <= set("lrud"):
                letters.extend(_MOVES[ch] for ch in word)
            elif word not in _FILLER:
                return None
        elif token.group("arrow") is not None:
            arrows.append(_ARROWS[token.group("arrow")])
    return (letters or arrows) or None


def _parse_route(text: str) -> tuple[str, list[_Cell]] | None:
    """("cells", [(r, c), …]) for a coordinate list, ("moves", [(dr, dc), …]) for moves, else ``None``."""
    cells = [(int(r), int(c)) for r, c in _COORD.findall(text)]
    if cells:
        return "cells", cells
    moves = _parse_moves(text)
    return ("moves", moves) if moves else None


def _route_is_valid(board: _Board, route: tuple[str, list[_Cell]], require_shortest: bool) -> bool:
    kind, items = route
    if kind == "moves":
        cells = [board.start]
        for dr, dc in items:
            cells.append((cells[-1][0] + dr, cells[-1][1] + dc))
    else:
        cells = items if items[0] == board.start else [board.start, *items]
    if len(cells) < 2:
        return False
    for index, (prev, cell) in enumerate(pairwise(cells), start=1):
        if abs(prev[0] - cell[0]) + abs(prev[1] - cell[1]) != 1:
            return False
        if not board.inside(cell) or cell in board.blocked:
            return False
        if cell == board.goal and index != len(cells) - 1:
            return False  # reaching the goal ends the episode: further moves make the answer wrong
    if cells[-1] != board.goal:
        return False
    return not require_shortest or len(cells) - 1 == board.shortest()


def _cell(value: Any, name: str) -> _Cell:
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"meta {name!r} must be [row, col], got {value!r}")
    return int(value[0]), int(value[1])


def _rows(raw: Any, name: str) -> list[list[str]]:
    if isinstance(raw, str):
        raw = [row for row in re.split(r"[\s/,;]+", raw.strip()) if row]
    if not isinstance(raw, list | tuple) or not raw:
        raise ValueError(f"meta {name!r} must be a non-empty list of rows")
    rows = [
        list(row) if isinstance(row, str) else [str(int(v)) if isinstance(v, bool) else str(v) for v in row]
        for row in raw
    ]
    if any(len(row) != len(rows[0]) for row in rows) or not rows[0]:
        raise ValueError(f"meta {name!r} rows must be non-empty and of equal length")
    return rows


def _frozenlake_board(meta: Mapping[str, Any]) -> _Board:
    rows = [[ch.upper() for ch in row] for row in _rows(meta["map"], "map")]
    cells = {(r, c): ch for r, row in enumerate(rows) for c, ch in enumerate(row)}
    if set(cells.values()) - set("SFHG"):
        raise ValueError("meta 'map' may only hold S, F, H and G")
    starts = [cell for cell, ch in cells.items() if ch == "S"]
    goals = [cell for cell, ch in cells.items() if ch == "G"]
    if len(starts) != 1 or len(goals) != 1:
        raise ValueError("meta 'map' needs exactly one S and one G")
    blocked = frozenset(cell for cell, ch in cells.items() if ch == "H")
    return _Board(len(rows), len(rows[0]), blocked, starts[0], goals[0])


def _maze_board(meta: Mapping[str, Any]) -> _Board:
    rows = _rows(meta["grid"], "grid")
    if any(ch not in ("0", "1", "#", ".") for row in rows for ch in row):
        raise ValueError("meta 'grid' cells must be 0 (open) or 1 (wall)")
    blocked = frozenset((r, c) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch in ("1", "#"))
    board = _Board(
        len(rows), len(rows[0]), blocked, _cell(meta.get("start"), "start"), _cell(meta.get("goal"), "goal")
    )
    for name, cell in (("start", board.start), ("goal", board.goal)):
        if not board.inside(cell) or cell in board.blocked:
            raise ValueError(f"meta {name!r} {list(cell)} is outside the grid or on a wall")
    return board


def _route_candidate(text: str, predicted: str, source: str, parse: Callable[[str], Any]) -> str:
    """For routes and permutations a fallback answer may span lines ("R\\nR\\nD"): take the trailing run."""
    if source not in ("option_line", "last_line"):
        return predicted
    lines = [line.strip() for line in strip_thinking(text).splitlines() if line.strip()]
    block: list[str] = []
    for line in reversed(lines):
        if _FENCE_ONLY.match(line):
            if block:
                break
            continue
        if not parse(_clean(line)):
            break
        block.insert(0, _clean(line))
    return " ".join(block) if len(block) > 1 else predicted


def _match_route(
    text: str, predicted: str, source: str, expected: str, meta: Mapping[str, Any] | None, scorer: Scorer
) -> Match:
    rule = scorer.value
    meta = meta or {}
    has_board = "map" in meta if scorer is Scorer.FROZENLAKE else "grid" in meta
    board = None
    if has_board:
        board = _frozenlake_board(meta) if scorer is Scorer.FROZENLAKE else _maze_board(meta)
    predicted = _route_candidate(text, predicted, source, _parse_route)
    route = _parse_route(predicted)
    if board is not None:
        valid = route is not None and _route_is_valid(board, route, bool(meta.get("require_shortest")))
        return Match(valid, rule, predicted, expected)
    gold = _parse_route(expected)
    if gold is None:
        raise ValueError(
            f"{rule}: no {'map' if scorer is Scorer.FROZENLAKE else 'grid'} in meta and the "
            f"expected answer {expected!r} is not a move sequence"
        )
    return Match(route == gold, f"{rule}_moves", predicted, expected)


# ------------------------------------------------------------------------------------------------- jigsaw


def _parse_permutation(text: str, size: int | None = None) -> list[int] | None:
    tokens = re.findall(r"\d+", text)
    if size is not None and 1 < size <= 10 and len(tokens) == 1 and len(tokens[0]) == size:
        tokens = list(tokens[0])  # "2013" for a 2x2 puzzle
    return [int(token) for token in tokens] or None


def _is_permutation(values: list[int]) -> bool:
    """Each piece exactly once, numbered from 0 or from 1."""
    return sorted(values) in (list(range(len(values))), list(range(1, len(values) + 1)))


def _match_jigsaw(
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
    predicted = _route_candidate(text, predicted, source, _parse_permutation)
    return Match(_parse_permutation(predicted, len(gold)) == gold, "jigsaw", predicted, expected)


# ------------------------------------------------------------------------------------------------- public


def _route_auto(expected: str, meta: Mapping[str, Any] | None) -> Scorer:
    meta = meta or {}
    if "map" in meta:
        return Scorer.FROZENLAKE
    if "grid" in meta and "start" in meta and "goal" in meta:
        return Scorer.PATH
    if "rows" in meta and "cols" in meta:
        return Scorer.JIGSAW
    if "choices" in meta or _EXPECTED_OPTION.match(expected):
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

    ``scorer`` and ``meta`` are the manifest row's fields (SPEC §9); ``None`` means ``auto``. The final answer
    is extracted inside, so callers pass the raw response. ``rel_tol`` is the numeric rule's relative band;
    ``None`` takes the row's ``meta.rel_tol`` (a benchmark graded on exact values sets 0), else 5 %. Raises
    :class:`ValueError` for an unknown scorer, an empty expected answer or malformed ground truth, never for
    a bad prediction.
    """
    try:
        kind = Scorer(str(scorer or "auto").strip().lower())
    except ValueError:
        raise ValueError(f"unknown scorer {scorer!r}; valid: {', '.join(s.value for s in Scorer)}") from None
    if rel_tol is None:
        rel_tol = (meta or {}).get("rel_tol", _DEFAULT_REL_TOL)
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
    predicted, source = _extract(prediction)
    if not predicted:
        return Match(False, "empty", "", expected)
    if kind is Scorer.JUDGE:
        return Match(None, "judge", predicted, expected)
    if kind is Scorer.OPTION:
        return _match_option(prediction, predicted, expected, meta)
    if kind is Scorer.NUMERIC:
        return _match_numeric(predicted, expected, rel_tol)
    if kind in (Scorer.FROZENLAKE, Scorer.PATH):
        return _match_route(prediction, predicted, source, expected, meta, kind)
    if kind is Scorer.JIGSAW:
        return _match_jigsaw(prediction, predicted, source, expected, meta)
    result = _match_exact(predicted, expected)
    if auto and not result.correct and len(normalize_answer(expected).split()) >= _OPEN_ANSWER_MIN_WORDS:
        return Match(None, "open", predicted, expected)
    return result


def judge_prompt_for_open_answer(question: str, prediction: str, expected: str) -> str:
    """A prompt asking a judge for a 1/0 verdict: does the prediction mean the same as the reference?

    Used when :func:`match_answer` returns ``correct=None``; :func:`etchr.verdicts.judge_open_answer` asks
    it and reads the reply. Reasoning blocks are dropped from the prediction (they cost tokens and can sway
    the judge); the reply convention is the other judges' (``etchr.tasks.JUDGE_REPLY_CONVENTION``).
    """
    answer = strip_thinking(prediction) or "(no answer)"
    return (
        "You are grading a model's answer to a question against the reference answer.\n\n"
        f"Question: {question.strip()}\n\n"
        f"Reference answer: {expected.strip()}\n\n"
        f"Model's answer: {answer}\n\n"
        "Does the model's answer mean the same as the reference answer: the same object, value or claim, "
        "allowing for different wording, formatting or extra explanation that does not contradict it? "
        "Answer 0 if it names something different, is incomplete, hedges between several answers or "
        "contradicts the reference.\n\n"
        f"{JUDGE_REPLY_CONVENTION}"
    )
