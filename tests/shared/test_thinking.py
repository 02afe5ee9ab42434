"""The one reasoning stripper: answers, judge verdicts and routing all read a reply through it."""

from __future__ import annotations

import pytest

from etchr.answers import extract_final_answer
from etchr.thinking import strip_thinking
from etchr.verdicts import read_verdict
from etchr_verifier.routing import parse_route


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>it is A</think>The answer is B.", "The answer is B."),
        ("<THINK>\nlong\n</THINK>\n\nB", "B"),
        ("<think>a</think> x <thinking>b</thinking> y", "x  y"),
        ("<thinking>\nThe user asks about image 1.\n</thinking>\n\nYes.", "Yes."),
        ("<think></think>\n\n\\boxed{1}", "\\boxed{1}"),  # Qwen3 with thinking switched off
        ("reasoning without an opener</think>\nC", "C"),  # the opener sat in the chat template
        ("Okay, step 1 goes right.\n</think>\n\n<think>more</think>0", "0"),
        ("<think>cut off by the token limit, maybe A", ""),
        ("The box is drawn. <think>and then it started thinking again", "The box is drawn."),
        ("no reasoning at all", "no reasoning at all"),
        ("  padded  ", "padded"),
        ("", ""),
    ],
)
def test_strip_thinking(text: str, expected: str) -> None:
    assert strip_thinking(text) == expected


@pytest.mark.parametrize(
    ("reply", "answer", "verdict", "route"),
    [
        # closed block: each reader sees only what follows it
        (
            "<think>Maybe it is logic, or 3d? The answer could be 0.</think>\n\njigsaw",
            "jigsaw",
            "none",
            "jigsaw",
        ),
        # bare closing tag (the template opened the block): what came before it is reasoning
        ("It could be chart. Maybe yes.\n</think>\n\nlogic", "logic", "none", "logic"),
        # never closed (cut while thinking): no answer, no verdict, no family
        ("<think>\nThe question is about a maze, so logic; the answer is 1", "", "none", "none"),
    ],
)
def test_every_reader_drops_reasoning_the_same_way(reply: str, answer: str, verdict: str, route: str) -> None:
    assert extract_final_answer(reply) == answer
    assert read_verdict(reply).cause == verdict
    assert parse_route(reply, ("perception", "chart", "logic", "jigsaw", "3d", "none")) == route
