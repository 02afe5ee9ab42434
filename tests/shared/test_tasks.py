from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from etchr.tasks import QUESTION_PLACEHOLDER, TASK_IDS, TaskFamily, TaskRegistry, UnknownTaskError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"
QUESTION = "Is the {red} mug left of the laptop?\nA. yes  B. no"


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
    assert family.judge_prompt.count(QUESTION_PLACEHOLDER) == 1
    assert family.judge_prompt.rstrip().endswith("Answer with a single digit: 1 if yes, 0 if no.")
    assert "first" in family.judge_prompt and "second" in family.judge_prompt  # original, then the edit


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
    assert "1 if yes, 0 if no" in prompt


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
    docs = DOCS.read_text(encoding="utf-8")
    for family in TaskRegistry.default():
        assert family.meta_prompt in docs, family.id
        assert family.judge_prompt in docs, family.id
