"""The one place reasoning blocks are removed from a model's reply.

Thinking models (QwQ, Qwen3-thinking, DeepSeek-R1 and their chat templates) wrap their reasoning in
``<think>…</think>`` (some in ``<thinking>…</thinking>``). Answers, judge verdicts and routing decisions are
read only from what the model stated after it; if each reader stripped reasoning its own way, a reply could
count as an answer in one place and as "no answer" in another.
"""

from __future__ import annotations

import re

__all__ = ["strip_thinking"]

_BLOCK = re.compile(r"<(think|thinking)\s*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_CLOSE = re.compile(r"</think(?:ing)?\s*>", re.IGNORECASE)
_OPEN = re.compile(r"<think(?:ing)?\s*>", re.IGNORECASE)


def strip_thinking(text: str) -> str:
    """``text`` without its reasoning, trimmed.

    Rules, in order: closed ``<think>…</think>`` / ``<thinking>…</thinking>`` blocks are dropped; a closing
    tag left without an opener (chat templates that put ``<think>`` in the prompt) drops everything before
    it; an opener that is never closed (reasoning cut off by the token limit) drops everything after it, so
    a truncated reply has no answer rather than one guessed from half-finished reasoning.
    """
    text = _BLOCK.sub("", text)
    closes = list(_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text.strip()
