from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from etchr.prompts import (
    OPEN_ANSWER_JUDGE_PROMPT,
    OPEN_ANSWER_JUDGE_PROMPT_VERSION,
    AnswerPrompts,
    judge_prompt_for_open_answer,
)
from etchr.tasks import JUDGE_REPLY_CONVENTION, TaskRegistry
from etchr_verifier.routing import parse_route

CHOICES = ("perception", "chart", "logic", "jigsaw", "3d", "none")
VERSION_BEFORE_FOCUS_ON_THE_EDIT = "d32a4b7a78aa"  # the defaults that said "trust the original"


def test_defaults_fill_every_placeholder() -> None:
    prompts = AnswerPrompts()
    tasks = TaskRegistry.default()
    question = "What is {x} in the chart?"  # braces in a question stay literal
    for text in (
        prompts.direct(question),
        prompts.with_edit(question, tasks.get("chart").edit),
        prompts.routing(question, tasks),
    ):
        assert question in text
        assert "{question}" not in text and "{edit}" not in text and "{families}" not in text
    routing = prompts.routing(question, tasks)
    for family in tasks:
        assert f"- {family.id}: {family.edit}" in routing
    assert "perception, chart, logic, jigsaw, 3d, none" in routing


@pytest.mark.parametrize("task_id", ["perception", "chart", "logic", "jigsaw", "3d"])
def test_with_edit_says_which_image_is_which_and_to_rely_on_the_helper_view(task_id: str) -> None:
    """The authors' recipe in meaning: image 1 is the original, image 2 the helper view made for this
    question, and U relies on the helper view — never "trust the original", which is the shuffled puzzle
    for jigsaw and the wrong viewpoint for 3d."""
    tasks = TaskRegistry.default()
    text = AnswerPrompts().with_edit("Which exit?", tasks.get(task_id).edit)
    lowered = text.lower()
    assert "the first is the original image" in lowered
    assert "the second is a helper view" in lowered and "for this question" in lowered
    assert "focus on the helper view" in lowered
    assert "trust the original" not in lowered and "disagree" not in lowered
    assert tasks.get(task_id).edit in text
    assert text.endswith("give the final answer as \\boxed{...}.")


def test_changed_defaults_have_a_new_version() -> None:
    """R_guid and Eq. 1 results are cached per prompts version: none from the old wording returns."""
    assert AnswerPrompts().version != VERSION_BEFORE_FOCUS_ON_THE_EDIT
    old_wording = AnswerPrompts().reason_with_edit.replace("Focus on", "Trust the original, but look at")
    assert AnswerPrompts(reason_with_edit=old_wording).version != AnswerPrompts().version


def test_file_overrides_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"reason_direct": "Q: {question}\nAnswer in one word."}))
    custom = AnswerPrompts.from_file(path)
    assert custom.direct("why?") == "Q: why?\nAnswer in one word."
    assert custom.reason_with_edit == AnswerPrompts().reason_with_edit
    assert custom.version != AnswerPrompts().version
    assert AnswerPrompts.from_file(None) == AnswerPrompts()


@pytest.mark.parametrize(
    "content",
    [
        {"reason_direct": "no placeholder here"},
        {"route": "{question} but no families"},
        {"reason_drect": "typo {question}"},
    ],
)
def test_bad_prompt_files_fail_clearly(tmp_path: Path, content: dict[str, str]) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="bad prompts file"):
        AnswerPrompts.from_file(path)


@pytest.mark.parametrize(
    ("reply", "task"),
    [
        ("logic", "logic"),
        ("  **Chart**.", "chart"),
        ("<think>maybe perception?</think>\n3d", "3d"),
        ("none", "none"),
        ("jigsaw-like", "none"),
        ("I don't know", "none"),
        ("", "none"),
    ],
)
def test_parse_route(reply: str, task: str) -> None:
    assert parse_route(reply, CHOICES) == task


def test_docs_show_the_default_prompts_verbatim() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "prompts.md").read_text()
    defaults = AnswerPrompts()
    for text in (defaults.reason_direct, defaults.reason_with_edit, defaults.route):
        assert f"```text\n{text}\n```" in docs


# ---------------------------------------------------------------------------------- open-answer judge


def test_judge_prompt_for_open_answer() -> None:
    prompt = judge_prompt_for_open_answer(
        " Where is the mug? ", "<think>secret</think>Left of the laptop.", "on the left side"
    )
    assert "Question: Where is the mug?" in prompt
    assert "Reference answer: on the left side" in prompt
    assert "Model's answer: Left of the laptop." in prompt
    assert "secret" not in prompt
    assert prompt.endswith(JUDGE_REPLY_CONVENTION)  # the one reply convention every judge is asked for
    assert "(no answer)" in judge_prompt_for_open_answer("q", "<think>x", "y")


def test_open_answer_judge_prompt_fills_each_placeholder_once_and_keeps_other_braces() -> None:
    prompt = judge_prompt_for_open_answer("What is {expected} in {x}?", "It is {question}.", "a {prediction}")
    assert "Question: What is {expected} in {x}?" in prompt
    assert "Reference answer: a {prediction}" in prompt
    assert "Model's answer: It is {question}." in prompt
    assert prompt.endswith("\\boxed{1} if the answer is yes or \\boxed{0} if it is no.")


def test_open_answer_judge_prompt_is_versioned_by_its_text() -> None:
    """The reward cache keys open-answer verdicts on this version (tests/reward/test_digest.py)."""
    by_text = hashlib.sha256(OPEN_ANSWER_JUDGE_PROMPT.encode()).hexdigest()[:12]
    assert by_text == OPEN_ANSWER_JUDGE_PROMPT_VERSION
    others = {AnswerPrompts().version, *(family.version for family in TaskRegistry.default())}
    assert OPEN_ANSWER_JUDGE_PROMPT_VERSION not in others
