"""Option letters: which letter a reply commits to, and the multiple-choice rule."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etchr.answers.extraction import BOLD
from etchr.answers.scorers import Match, match_exact, normalize_answer
from etchr.thinking import strip_thinking

__all__ = ["EXPECTED_OPTION", "extract_option_letter", "keyword_letter", "match_option"]

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


def keyword_letter(text: str, allowed: str) -> str | None:
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
    body = BOLD.sub("", strip_thinking(text)).strip()
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
    keyword = keyword_letter(body, allowed)
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


EXPECTED_OPTION = re.compile(r"^\s*(?:\(\s*[A-Ha-h]\s*\)|[A-H])\s*\.?\s*$|^\s*\(\s*[A-H]\s*\)\s+\S")
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


def match_option(text: str, predicted: str, expected: str, meta: Mapping[str, Any] | None) -> Match:
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
            return match_exact(predicted, expected)
        gold = by_text[0]
    said = normalize_answer(predicted)
    quoted = [k for k, option in texts.items() if said and normalize_answer(option) == said]
    if len(quoted) == 1:
        return Match(quoted[0] == gold, "option_text", predicted, expected)
    letter = extract_option_letter(predicted, allowed)
    if letter is None:  # e.g. "So the correct choice is B, the mug.\n\nHope this helps!"
        letter = keyword_letter(BOLD.sub("", strip_thinking(text)), allowed)
    return Match(letter == gold, "option", predicted, expected)
