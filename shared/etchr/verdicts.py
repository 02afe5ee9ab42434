"""The one judge-verdict reader: what a judge meant by its reply (docs/answers.md).

Every judge path asks a model for a yes/no verdict and reads the reply here: EVR verification, R_corr
(the reward's correctness votes) and the open-answer judge (:mod:`etchr.open_answer_judge`: R_guid, Eq. 1
and evaluation of open answers).
Real judges (Qwen-VL, InternVL, GPT-4o, Gemini, thinking models) rarely reply with a bare digit, and their
explanations are full of numbers ("image 1", "step 1", "1 red box"), so the reader looks for a verdict only
where a verdict is stated: at the very start of the reply and in its conclusion.

Rules of :func:`read_verdict`, in order:

1. Reasoning is dropped (:func:`etchr.thinking.strip_thinking`): closed ``<think>`` blocks, everything
   before a bare ``</think>``, everything after a ``<think>`` never closed (a reply cut while thinking has
   nothing left, so no verdict).
2. Decoration is read through: markdown emphasis, code spans, quotes, ``$…$``, ``\\text{…}``; a
   ``\\boxed{…}`` reads as its content.
3. A *verdict token* is ``1``, ``0``, ``yes``, ``no``, ``true`` or ``false`` (any case) standing alone:
   followed by punctuation, a bracket, a dash or the end of the line, never by a word, a digit or a slash.
   So "1 red box", "0.5", "no box" and "1/0" hold no token, and since tokens are looked for only in the two
   places below, a number inside a phrase ("image 1", "step 1", "row 0", "option 1") is never a verdict.
4. The *leading verdict*: the first statement (sentence or line) starts with a token, possibly after a
   conclusion marker ("No, there is no red box…", "0. The image shows…", "0 (the path…", "Verdict: 0 …").
   A "1." or "1)" that labels a numbered list (a "2." item follows) is not a verdict.
5. The *concluding verdict*: the last ``\\boxed{}`` holding a verdict; else the last conclusion marker
   followed by a token ("the answer is 0", "Therefore: 1", "Verdict: 0", "Final answer: yes", "so 0",
   "I'd say 1", "Therefore, the edit is reliable: 1"); else the last statement being a bare token.
6. The reply is *not reliable* (value ``None``) when the leading and concluding verdicts disagree
   (``disagree``); when a statement holding a verdict hedges, or no verdict is found in a reply that hedges —
   it offers both alternatives ("yes or no", "1/0") or says it cannot decide ("cannot tell", "unclear",
   "I can't determine") (``hedge``); when there is no verdict (``none``, or ``truncated`` when the reply was
   cut at max_tokens). A cut reply that still states a verdict is read like any other.

Callers decide what "not reliable" costs: EVR falls back to the original image, R_corr counts the vote as
negative; both count the cause in their metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from etchr.mllm import MLLMIncomplete
from etchr.thinking import strip_thinking

__all__ = [
    "CAUSES",
    "READER_VERSION",
    "Cause",
    "Verdict",
    "incomplete_reply",
    "read_verdict",
]

# Bump whenever the reading rules change: reward caches key on it, so a verdict read under old rules is
# never reused (version 1 was etchr.mllm.parse_verdict, where the last 1/0/yes/no token anywhere won).
READER_VERSION = "2"

Cause = Literal["yes", "no", "disagree", "hedge", "none", "truncated"]
CAUSES: tuple[Cause, ...] = ("yes", "no", "disagree", "hedge", "none", "truncated")


@dataclass(frozen=True)
class Verdict:
    """What a judge's reply says: ``value`` True/False for a clear verdict, ``None`` when not reliable;
    ``cause`` says which (``yes``/``no``, or why there is no usable verdict)."""

    value: bool | None
    cause: Cause

    @property
    def reliable(self) -> bool:
        """The judge clearly said yes (what EVR needs to use an edit)."""
        return self.value is True


# ------------------------------------------------------------------------------------------------ tokens

_VALUES = MappingProxyType({"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False})
_WORDS = r"(?:yes|no|true|false|1|0)"
# A token stands alone: not glued to a word, number or slash before it, and followed (after spaces) only by
# punctuation, a bracket, a dash or the end of the line — "1 red box", "0.5", "1,000", "1/0" hold none.
_TOKEN = rf"(?<![\w./\\-])(?P<token>{_WORDS})(?![.,]\d)(?=[ \t]*(?:[.,;:!?…)\]}}(\-–—>]|$))"
# What introduces a concluding verdict: a verdict noun ("the answer is", "Verdict:", "Final answer:"), a
# conclusion adverb ("so", "Therefore:"), an adverb opening a clause that ends in a colon or dash
# ("Therefore, the edit is reliable: 1"), or a first-person statement ("I'd say").
_MARKERS = (
    r"\b(?:final\s+)?(?:answer|verdict|judge?ment|decision|conclusion|output|result|response|reply|score"
    r"|rating|label|grade)\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:=：\-–—]?",
    r"\b(?:so|therefore|thus|hence|overall)\b\s*[:,]?",
    r"\b(?:so|therefore|thus|hence|overall|in\s+conclusion|in\s+summary)\b[^\n.!?:]*[:–—]",
    r"\bi(?:\s+would|'d|\s+will|'ll)?\s+(?:say|answer|go\s+with|output)\b\s*[:,]?",
)
_MARKER = "(?:" + "|".join(_MARKERS) + r")\s*"
_LEADING = re.compile(rf"^[\s#>•]*(?:[-*+]\s+)?(?:{_MARKER})?{_TOKEN}", re.IGNORECASE)
_CONCLUSION = re.compile(rf"{_MARKER}{_TOKEN}", re.IGNORECASE | re.MULTILINE)
_BARE = re.compile(rf"^[\s#>•(\[]*{_TOKEN}[\s)\].!]*$", re.IGNORECASE)
_SECOND_LIST_ITEM = re.compile(r"(?:^|\s)2[.)]\s+\S")

# ------------------------------------------------------------------------------------------------ hedges

_ALTERNATIVES = re.compile(
    rf"(?<![\w.])(?P<a>{_WORDS})\s*(?:or|/|\||and|vs\.?|versus)\s*(?P<b>{_WORDS})(?!\w)", re.IGNORECASE
)
_UNDECIDED = re.compile(
    r"\b(?:can\s*not|can't|cant|could\s*not|couldn't|unable\s+to|not\s+able\s+to|impossible\s+to|hard\s+to"
    r"|difficult\s+to|not\s+possible\s+to)\s+(?:\w+\s+)?(?:tell|determined?|say|judge|decide|verify|confirm"
    r"|be\s+(?:sure|certain))\b"
    r"|\b(?:unclear|uncertain|unsure|not\s+(?:sure|certain|clear)|ambiguous|inconclusive|undetermined"
    r"|indeterminate|(?:insufficient|not\s+enough)\s+information|(?:don't|do\s+not)\s+know|it\s+depends)\b",
    re.IGNORECASE,
)

# ---------------------------------------------------------------------------------------------- markup

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LATEX_DELIMITERS = re.compile(r"\\[()\[\]]")
# Emphasis, code spans, math dollars and quotes; an apostrophe inside a word ("can't") stays.
_DECORATION = re.compile(r"[*`$\"]|(?<![A-Za-z])['_]|['_](?![A-Za-z])")
_CURLY = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})
_STATEMENT_BREAK = re.compile(r"\n|(?<=[.!?])\s+")


@dataclass(frozen=True)
class _Stated:
    """One verdict found in the reply and the statement it was stated in (checked for hedges)."""

    value: bool
    statement: str


def _unbox(text: str) -> tuple[str, list[str]]:
    """``text`` with every ``\\boxed{…}`` replaced by its content, and the contents in order (nested braces
    balanced)."""
    contents: list[str] = []
    out: list[str] = []
    position = 0
    for start in _BOX.finditer(text):
        if start.start() < position:
            continue  # a box nested inside one already taken
        depth, i = 1, start.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            break  # unbalanced: leave the rest as it is
        content = text[start.end() : i - 1]
        contents.append(content)
        out.append(text[position : start.start()] + content)
        position = i
    out.append(text[position:])
    return "".join(out), contents


def _plain(text: str) -> str:
    """The text a reader sees: LaTeX text wrappers and delimiters, emphasis, code and quotes removed."""
    text = text.translate(_CURLY)
    while (unwrapped := _LATEX_WRAP.sub(r"\1", text)) != text:
        text = unwrapped
    return _DECORATION.sub("", _LATEX_DELIMITERS.sub(" ", text))


def _statements(text: str) -> list[str]:
    return [part.strip() for part in _STATEMENT_BREAK.split(text) if part.strip()]


def _hedges(text: str) -> bool:
    """Offers both verdicts ("yes or no", "1/0") or says it cannot decide ("cannot tell", "unclear")."""
    if _UNDECIDED.search(text):
        return True
    return any(
        _VALUES[m.group("a").lower()] != _VALUES[m.group("b").lower()] for m in _ALTERNATIVES.finditer(text)
    )


def _leading(statements: list[str], text: str) -> _Stated | None:
    """The verdict the first statement starts with, unless that is the "1." of a numbered list."""
    if not statements:
        return None
    first = statements[0]
    match = _LEADING.match(first)
    if match is None:
        return None
    token = match.group("token")
    labels_a_list = token == "1" and first[match.end() : match.end() + 1] in (".", ")")
    if labels_a_list and _SECOND_LIST_ITEM.search(text):
        return None
    return _Stated(_VALUES[token.lower()], first)


def _concluding(boxes: list[str], statements: list[str], text: str) -> _Stated | None:
    """The last boxed verdict; else the last conclusion marker's; else a bare last statement."""
    for content in reversed(boxes):
        match = _BARE.match(_plain(content))
        if match is not None:
            return _Stated(_VALUES[match.group("token").lower()], content)
    markers = list(_CONCLUSION.finditer(text))
    if markers:
        last = markers[-1]
        return _Stated(_VALUES[last.group("token").lower()], _statement_at(text, last.start("token")))
    if statements and (match := _BARE.match(statements[-1])) is not None:
        return _Stated(_VALUES[match.group("token").lower()], statements[-1])
    return None


def _statement_at(text: str, index: int) -> str:
    """The statement (sentence or line) of ``text`` that holds position ``index``."""
    start = max((m.end() for m in _STATEMENT_BREAK.finditer(text, 0, index)), default=0)
    end = _STATEMENT_BREAK.search(text, index)
    return text[start : end.start() if end else len(text)]


def read_verdict(text: str, *, truncated: bool = False) -> Verdict:
    """What the judge meant by ``text`` (see the module docstring for the rules).

    ``truncated``: the backend cut the reply at max_tokens; a reply with no verdict is then reported as
    ``truncated`` rather than ``none`` (the budget, not the judge, is to blame).
    """
    body, boxes = _unbox(strip_thinking(text or ""))
    plain = _plain(body)
    statements = _statements(plain)
    stated = [
        found
        for found in (_leading(statements, plain), _concluding(boxes, statements, plain))
        if found is not None
    ]
    if any(_hedges(found.statement) for found in stated):
        return Verdict(None, "hedge")
    values = {found.value for found in stated}
    if len(values) > 1:
        return Verdict(None, "disagree")
    if values:
        value = values.pop()
        return Verdict(value, "yes" if value else "no")
    if truncated:
        return Verdict(None, "truncated")
    return Verdict(None, "hedge" if _hedges(plain) else "none")


# ------------------------------------------------------------------------------------ asking a judge


def incomplete_reply(backend: str, *, wanted: str, max_tokens: int, setting: str) -> MLLMIncomplete:
    """The error for a reply cut at max_tokens before it gave what was asked for; names what to raise."""
    return MLLMIncomplete(
        f"MLLM {backend} stopped at max_tokens={max_tokens} (finish_reason 'length') before giving "
        f"{wanted}; raise {setting}",
        backend,
    )
