"""Final-answer extraction: what answer a model's reply states, read in one fixed order.

Reasoning blocks are dropped first (:func:`etchr.thinking.strip_thinking`), then the last ``\\boxed{…}``,
else an explicit answer line, else a lone option letter, else the last line (docs/answers.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from etchr.thinking import strip_thinking

__all__ = [
    "BOLD",
    "FENCE_ONLY",
    "clean",
    "explicit_final_answer",
    "extract",
    "extract_final_answer",
    "route_candidate",
]

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
FENCE_ONLY = re.compile(r"^[`~*_#>\-=\s]*$")
BOLD = re.compile(r"\*\*|__|`")


def clean(text: str) -> str:
    """Trim an extracted answer: markdown bold/italics and backticks, ``$…$`` math, trailing periods."""
    text = BOLD.sub("", text).strip().strip("*_").strip()
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
        line = BOLD.sub("", lines[index])
        markers = list(_ANSWER_MARKER.finditer(line))
        if markers:
            rest = line[markers[-1].end() :].strip()
        elif _ANSWER_HEADING.match(line):
            rest = ""
        else:
            continue
        if not FENCE_ONLY.match(rest):
            return rest
        following = next((nxt for nxt in lines[index + 1 :] if not FENCE_ONLY.match(nxt)), None)
        if following is not None:
            return following
    return None


def extract(text: str) -> tuple[str, str]:
    """The final answer and where it came from: boxed, answer_line, option_line, last_line or empty."""
    body = strip_thinking(text)
    boxed = _last_boxed(body)
    if boxed is not None:
        return clean(_unlatex(boxed)), "boxed"
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    stated = _answer_line(lines)
    if stated is not None and clean(stated):
        return clean(stated), "answer_line"
    for line in reversed(lines):
        if _LONE_LETTER_LINE.match(clean(line)):
            return clean(line), "option_line"
    for line in reversed(lines):
        if not FENCE_ONLY.match(line):
            return clean(line), "last_line"
    return "", "empty"


def extract_final_answer(text: str) -> str:
    """The model's final answer, read in a fixed order so every service agrees on it.

    Reasoning blocks are dropped first, then: the last ``\\boxed{…}``/``\\fbox{…}``; else the last explicit
    answer line ("Answer:", "Final answer:", "The answer is …"); else the last line that is a lone option
    letter ("(B)", "B.", "B"); else the last non-empty line. The result is trimmed, with markdown
    bold/backticks and a trailing period removed; empty text gives "".
    """
    return extract(text)[0]


def explicit_final_answer(text: str) -> str | None:
    """The final answer only when the text states one (a ``\\boxed{}`` or an answer line), else ``None``.

    What a reply cut at max_tokens still counts for: its last line is wherever the cut fell, so only an
    answer the model stated before the cut is an answer.
    """
    answer, source = extract(text)
    return answer if source in ("boxed", "answer_line") and answer else None


def route_candidate(text: str, predicted: str, source: str, parse: Callable[[str], Any]) -> str:
    """For routes and permutations a fallback answer may span lines ("R\\nR\\nD"): take the trailing run."""
    if source not in ("option_line", "last_line"):
        return predicted
    lines = [line.strip() for line in strip_thinking(text).splitlines() if line.strip()]
    block: list[str] = []
    for line in reversed(lines):
        if FENCE_ONLY.match(line):
            if block:
                break
            continue
        if not parse(clean(line)):
            break
        block.insert(0, clean(line))
    return " ".join(block) if len(block) > 1 else predicted
