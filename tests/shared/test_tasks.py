from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from etchr.tasks import (
    JUDGE_IMAGES,
    JUDGE_REPLY_CONVENTION,
    QUESTION_PLACEHOLDER,
    TASK_IDS,
    TaskFamily,
    TaskRegistry,
    UnknownTaskError,
)
from etchr.verdicts import read_verdict

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"
QUESTION = "Is the {red} mug left of the laptop?\nA. yes  B. no"
# The families' versions before issue 15 changed the judge prompts: caches keyed on them must not match.
VERSIONS_BEFORE_BOXED_VERDICTS = {
    "perception": "7ede09796528",
    "chart": "77a6ca6de72b",
    "logic": "5a3ec61a5cd7",
    "jigsaw": "b3e900804970",
    "3d": "15c4b536a66f",
}


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "tasks.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_task_ids_match_the_spec() -> None:
    assert TASK_IDS == ("perception", "chart", "logic", "jigsaw", "3d")
    assert TaskRegistry.default().ids() == TASK_IDS


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_every_family_has_prompts(task_id: str) -> None:
    family = TaskRegistry.default().get(task_id)
    assert family.id == task_id
    assert family.name and family.edit
    assert len(family.meta_prompt) > 40
    assert QUESTION_PLACEHOLDER not in family.meta_prompt
    for template in (family.judge_prompt, family.judge_prompt_edit_only):
        assert template.count(QUESTION_PLACEHOLDER) == 1
        assert template.endswith(JUDGE_REPLY_CONVENTION)  # one reply convention for EVR and R_corr
        assert "1 if yes" not in template and "single digit" not in template
    # [original, edit]: the prompt says which is which; the edit alone: it never mentions a second image
    assert "first" in family.judge_prompt and "second" in family.judge_prompt
    assert "second" not in family.judge_prompt_edit_only and "first" not in family.judge_prompt_edit_only
    assert "one image" in family.judge_prompt_edit_only
    assert family.judge_prompt_edit_only != family.judge_prompt


def test_the_reply_convention_is_a_final_boxed_verdict() -> None:
    assert "\\boxed{1}" in JUDGE_REPLY_CONVENTION and "\\boxed{0}" in JUDGE_REPLY_CONVENTION
    # What a judge that follows it writes is read as it meant, whatever numbers its reasoning mentions.
    followed = {
        "The red box in image 2 encloses the 1 mug the question asks about.\n\n\\boxed{1}": True,
        "<think>Step 1: the path starts at S. Step 2: it crosses a wall at row 3.</think>\n\\boxed{0}": False,
        "The second image shows 2 boxes, but neither frames the cup. **\\boxed{0}**": False,
    }
    for reply, meant in followed.items():
        assert read_verdict(reply).value is meant, reply


def test_meta_prompts_say_what_the_edit_shows() -> None:
    registry = TaskRegistry.default()
    assert "red box" in registry.get("perception").meta_prompt
    assert "red box" in registry.get("chart").meta_prompt
    assert "path" in registry.get("logic").meta_prompt and "goal" in registry.get("logic").meta_prompt
    assert "jigsaw" in registry.get("jigsaw").meta_prompt
    # The released checkpoint's 3D prompt, kept verbatim so it works without retraining.
    assert (
        registry.get("3d").meta_prompt
        == "Imagine a new perspective of the original image that helps answer the question."
    )


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_editor_prompt_is_meta_prompt_then_question(task_id: str) -> None:
    registry = TaskRegistry.default()
    prompt = registry.editor_prompt(task_id, QUESTION)
    family = registry.get(task_id)
    assert prompt == f"{family.meta_prompt} {QUESTION}"
    assert QUESTION in prompt
    assert prompt.startswith(family.meta_prompt)


def test_editor_prompt_trims_only_outer_whitespace() -> None:
    registry = TaskRegistry.default()
    assert registry.editor_prompt("logic", f"  {QUESTION}\n") == registry.editor_prompt("logic", QUESTION)


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_judge_prompt_fills_the_question(task_id: str) -> None:
    prompt = TaskRegistry.default().judge_prompt(task_id, QUESTION)
    assert QUESTION in prompt  # braces in the question are kept literally
    assert QUESTION_PLACEHOLDER not in prompt
    assert prompt.endswith(JUDGE_REPLY_CONVENTION)


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_judge_prompt_for_the_edit_alone(task_id: str) -> None:
    """The authors' R_corr judge sees only the edited image: its prompt must not talk about two images."""
    registry = TaskRegistry.default()
    both = registry.judge_prompt(task_id, QUESTION)
    edit_only = registry.judge_prompt(task_id, QUESTION, images="edit")
    assert both == registry.judge_prompt(task_id, QUESTION, images="both")
    assert edit_only != both
    assert QUESTION in edit_only and QUESTION_PLACEHOLDER not in edit_only
    assert edit_only.endswith(JUDGE_REPLY_CONVENTION)
    assert "second image" not in edit_only and "second image" in both
    assert JUDGE_IMAGES == ("both", "edit")
    with pytest.raises(ValueError, match="both, edit"):
        registry.judge_prompt(task_id, QUESTION, images="original")  # type: ignore[arg-type]


def test_judge_prompt_does_not_expand_placeholders_inside_the_question() -> None:
    prompt = TaskRegistry.default().judge_prompt("chart", "What does {question} mean?")
    assert prompt.count("What does {question} mean?") == 1


@pytest.mark.parametrize("bad", ["auto", "none", "Perception", "", "3D", None, 3])
def test_unknown_task_lists_the_valid_ids(bad: object) -> None:
    registry = TaskRegistry.default()
    with pytest.raises(UnknownTaskError) as info:
        registry.get(bad)  # type: ignore[arg-type]
    message = str(info.value)
    assert all(task_id in message for task_id in TASK_IDS)
    assert info.value.valid == TASK_IDS
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownTaskError):
        registry.editor_prompt(bad, "q")  # type: ignore[arg-type]
    with pytest.raises(UnknownTaskError):
        registry.judge_prompt(bad, "q")  # type: ignore[arg-type]


def test_from_file_none_or_empty_gives_defaults() -> None:
    default = TaskRegistry.default()
    for path in (None, "", "  "):
        registry = TaskRegistry.from_file(path)
        assert [f.version for f in registry] == [f.version for f in default]


def test_from_file_overrides_per_family(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "logic": {"meta_prompt": "Draw the blue path from green to red."},
            "3d": {"judge_prompt": "Original then novel view. Q: {question}\nReply 1 or 0."},
            "chart": {"judge_prompt_edit_only": "Only the chart. Q: {question}\n\\boxed{1} or \\boxed{0}?"},
        },
    )
    default = TaskRegistry.default()
    registry = TaskRegistry.from_file(str(path))
    assert registry.ids() == TASK_IDS
    assert registry.editor_prompt("logic", "Solve it.") == "Draw the blue path from green to red. Solve it."
    assert registry.get("logic").judge_prompt == default.get("logic").judge_prompt
    assert registry.judge_prompt("3d", "Where is the chair?") == (
        "Original then novel view. Q: Where is the chair?\nReply 1 or 0."
    )
    assert registry.get("3d").meta_prompt == default.get("3d").meta_prompt
    assert registry.get("perception") == default.get("perception")
    # the edit-only variant is overridable on its own, and only it changes
    assert registry.judge_prompt("chart", "Max?", images="edit") == (
        "Only the chart. Q: Max?\n\\boxed{1} or \\boxed{0}?"
    )
    assert registry.judge_prompt("chart", "Max?") == default.judge_prompt("chart", "Max?")
    where = ("3d", "Where?")
    assert registry.judge_prompt(*where, images="edit") == default.judge_prompt(*where, images="edit")
    assert TaskRegistry.from_file(path).get("logic") == registry.get("logic")  # Path works too


def test_empty_object_file_gives_defaults(tmp_path: Path) -> None:
    registry = TaskRegistry.from_file(_write(tmp_path, {}))
    assert registry.get("chart") == TaskRegistry.default().get("chart")


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ({"logc": {"meta_prompt": "x"}, "maze": {}}, ["'logc'", "'maze'", "perception"]),
        ({"logic": {"meta_promt": "x"}}, ["logic.meta_promt", "not permitted"]),
        ({"logic": {"judge_prompt": "no placeholder here"}}, ["logic.judge_prompt", "{question}"]),
        (
            {"logic": {"judge_prompt_edit_only": "no placeholder"}},
            ["logic.judge_prompt_edit_only", "{question}"],
        ),
        ({"logic": {"meta_prompt": "   "}}, ["logic.meta_prompt", "empty"]),
        ({"logic": {"meta_prompt": "Solve {question}"}}, ["logic.meta_prompt", "appended"]),
        ({"logic": {"meta_prompt": 3}}, ["logic.meta_prompt", "string"]),
        ({"logic": "Draw the path"}, ["logic", "object"]),
        (["logic"], ["JSON object"]),
        ("{not json", ["not valid JSON"]),
    ],
)
def test_bad_files_fail_clearly(tmp_path: Path, content: object, needles: list[str]) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ValueError) as info:
        TaskRegistry.from_file(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def test_missing_file_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="cannot be read"):
        TaskRegistry.from_file(missing)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = _write(tmp_path, {"logic": {"meta_promt": "x"}, "chart": {"judge_prompt": "no slot"}})
    with pytest.raises(ValueError) as info:
        TaskRegistry.from_file(path)
    assert "logic.meta_promt" in str(info.value) and "chart.judge_prompt" in str(info.value)


def test_version_is_a_short_stable_hash_of_the_prompts() -> None:
    family = TaskRegistry.default().get("perception")
    assert len(family.version) == 12
    assert int(family.version, 16) >= 0
    assert family.version == TaskRegistry.default().get("perception").version
    versions = {f.version for f in TaskRegistry.default()}
    assert len(versions) == len(TASK_IDS)


def test_version_changes_when_a_prompt_changes(tmp_path: Path) -> None:
    family = TaskRegistry.default().get("jigsaw")
    assert dataclasses.replace(family, meta_prompt=family.meta_prompt + "!").version != family.version
    assert dataclasses.replace(family, judge_prompt=family.judge_prompt + "!").version != family.version
    edit_only = dataclasses.replace(family, judge_prompt_edit_only=family.judge_prompt_edit_only + "!")
    assert edit_only.version != family.version
    # Descriptive fields are not prompts: they do not invalidate caches.
    assert dataclasses.replace(family, name="other name").version == family.version
    overridden = TaskRegistry.from_file(_write(tmp_path, {"jigsaw": {"meta_prompt": "Restore it."}}))
    assert overridden.get("jigsaw").version != family.version
    assert overridden.get("logic").version == TaskRegistry.default().get("logic").version


def test_registry_validates_families() -> None:
    family = TaskRegistry.default().get("logic")
    with pytest.raises(ValueError, match="id"):
        TaskRegistry({"chart": family})
    with pytest.raises(ValueError, match="question"):
        TaskRegistry({"logic": dataclasses.replace(family, judge_prompt="no slot")})
    with pytest.raises(ValueError, match="judge_prompt_edit_only"):
        TaskRegistry({"logic": dataclasses.replace(family, judge_prompt_edit_only="no slot")})
    with pytest.raises(ValueError):
        TaskRegistry({})
    custom = TaskRegistry({"logic": family})
    assert custom.ids() == ("logic",)
    assert "logic" in custom and "chart" not in custom


def test_families_are_immutable() -> None:
    family = TaskRegistry.default().get("logic")
    assert isinstance(family, TaskFamily)
    with pytest.raises(dataclasses.FrozenInstanceError):
        family.meta_prompt = "x"  # type: ignore[misc]


def test_docs_show_the_default_prompts_verbatim() -> None:
    """The page's "Default prompts" section is exactly what the code holds: no prompt missing, none stale."""
    docs = DOCS.read_text(encoding="utf-8")
    section = docs[docs.index("## Default prompts") :]
    shown = re.findall(r"```text\n(.*?)\n```", section, flags=re.DOTALL)
    expected = [
        prompt
        for family in TaskRegistry.default()
        for prompt in (family.meta_prompt, family.judge_prompt, family.judge_prompt_edit_only)
    ]
    assert shown == expected
    for family in TaskRegistry.default():
        assert f"### `{family.id}` — {family.name}" in section
        assert f"The edit shows {family.edit}." in section


def test_docs_override_example_is_a_valid_tasks_file(tmp_path: Path) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    section = docs[docs.index("## Overriding the prompts") :]
    example = re.search(r"```json\n(.*?)\n```", section, flags=re.DOTALL)
    assert example is not None
    registry = TaskRegistry.from_file(_write(tmp_path, example.group(1)))
    assert registry.get("3d").judge_prompt_edit_only.startswith("This image is a view of a scene.")


def test_changed_prompts_changed_every_version() -> None:
    """Caches keyed on a family's version never serve verdicts given under the old 1/0-digit prompts."""
    for family in TaskRegistry.default():
        assert family.version != VERSIONS_BEFORE_BOXED_VERDICTS[family.id]
