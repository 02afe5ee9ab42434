"""The five ETCHR task families (SPEC §2) and the one place prompts are built.

The editor is conditioned on ``meta_prompt + " " + question`` — not on an edit instruction — so the
serving path, the SFT trainer and the RL sampler must build that text identically, or the LoRA sees a
prompt distribution it was never trained on. :meth:`TaskRegistry.editor_prompt` is that single builder;
:meth:`TaskRegistry.judge_prompt` is its counterpart for verification (EVR) and R_corr.

Prompts are configurable per family through a JSON file (``ETCHR_TASKS_FILE``, see docs/tasks.md), and
every family carries a short content hash (:attr:`TaskFamily.version`) so caches of judge verdicts or
rewards never mix results produced under different prompts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

__all__ = [
    "QUESTION_PLACEHOLDER",
    "TASK_IDS",
    "TaskFamily",
    "TaskRegistry",
    "UnknownTaskError",
]

TASK_IDS: tuple[str, ...] = ("perception", "chart", "logic", "jigsaw", "3d")
# Where a judge prompt takes the question; filled by plain substitution, so other braces are literal.
QUESTION_PLACEHOLDER = "{question}"


@dataclass(frozen=True)
class TaskFamily:
    """One task family: what its edit shows, the editor's meta-prompt and the judge's prompt template."""

    id: str
    name: str
    edit: str
    meta_prompt: str
    judge_prompt: str

    @property
    def version(self) -> str:
        """12 hex digits hashing the prompts: changes whenever either prompt changes, so caches key on it."""
        content = "\x00".join((self.id, self.meta_prompt, self.judge_prompt))
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]


class UnknownTaskError(ValueError):
    """A task id that names no family; the message lists the valid ids so a caller can fix the request."""

    def __init__(self, task_id: object, valid: tuple[str, ...]) -> None:
        self.task_id = task_id
        self.valid = valid
        super().__init__(f"unknown task {task_id!r}; valid tasks: {', '.join(valid)}")


# ------------------------------------------------------------------------------------- default prompts

_JUDGE_HEAD = (
    "You are shown two images. The first is the original image; the second is an edited version of it, "
    "made to help answer the question below.\n\n"
    f"Question: {QUESTION_PLACEHOLDER}\n\n"
)
_JUDGE_TAIL = "\n\nAnswer with a single digit: 1 if yes, 0 if no."

_DEFAULT_FAMILIES: tuple[TaskFamily, ...] = (
    TaskFamily(
        id="perception",
        name="fine-grained perception",
        edit="a red box around the referent(s) of the question",
        meta_prompt=(
            "Draw a red box around the object(s) the question asks about, so the details needed to answer "
            "it stand out; leave the rest of the image unchanged."
        ),
        judge_prompt=_JUDGE_HEAD
        + (
            "Does the second image mark the object(s) the question asks about with a red box that encloses "
            "them, so that the information needed to answer the question is clearly visible? Answer 0 if "
            "there is no red box, if a box frames the wrong object or misses part of what is needed, or if "
            "the edit altered or hid the content needed to answer."
        )
        + _JUDGE_TAIL,
    ),
    TaskFamily(
        id="chart",
        name="chart understanding",
        edit="a red box around the chart element(s) needed to answer",
        meta_prompt=(
            "Draw a red box around the chart elements (bars, points, lines, labels, legend entries or cells) "
            "needed to answer the question; leave the rest of the chart unchanged."
        ),
        judge_prompt=_JUDGE_HEAD
        + (
            "Does the second image mark, with red boxes, exactly the chart elements (bars, points, lines, "
            "labels, legend entries or cells) whose values are needed to answer the question, with their "
            "values still readable? Answer 0 if there is no red box, if a box frames the wrong elements or "
            "misses a needed one, or if the edit altered the chart's data."
        )
        + _JUDGE_TAIL,
    ),
    TaskFamily(
        id="logic",
        name="logic / path reasoning",
        edit="the solution path drawn from start to goal",
        meta_prompt=(
            "Draw the shortest path from the start to the goal as a continuous line that moves only up, "
            "down, left or right through open cells and avoids walls and holes; leave the rest of the image "
            "unchanged."
        ),
        judge_prompt=_JUDGE_HEAD
        + (
            "Does the second image show a valid solution path: one continuous line from the start to the "
            "goal that moves only up, down, left or right, never crosses a wall, hole or other obstacle, "
            "and lies on the same layout as the original? Answer 0 if there is no path, if it is broken, "
            "diagonal, ends elsewhere or crosses an obstacle, or if the layout itself was changed."
        )
        + _JUDGE_TAIL,
    ),
    TaskFamily(
        id="jigsaw",
        name="jigsaw restoration",
        edit="the shuffled patches restored to the original layout",
        meta_prompt=(
            "Restore the shuffled jigsaw: move every patch back to its original position so the picture is "
            "whole and coherent, without changing the content of any patch."
        ),
        judge_prompt=_JUDGE_HEAD
        + (
            "The first image is a jigsaw puzzle whose patches were shuffled. Is the second image a correct "
            "restoration of it: every patch of the first image placed back in its original position, "
            "forming one coherent picture, with no patch lost, duplicated, invented or altered?"
        )
        + _JUDGE_TAIL,
    ),
    TaskFamily(
        id="3d",
        name="3D understanding",
        edit="the scene rendered from the viewpoint the question needs",
        # The released ETCHR checkpoint was trained with exactly this sentence for its 3D family.
        meta_prompt="Imagine a new perspective of the original image that helps answer the question.",
        judge_prompt=_JUDGE_HEAD
        + (
            "Does the second image show the same scene as the first from a new viewpoint that makes the "
            "objects and spatial relations the question asks about visible, consistent with the original "
            "scene (no objects invented, removed or moved)?"
        )
        + _JUDGE_TAIL,
    ),
)


# ------------------------------------------------------------------------------------------ overrides


class _FamilyOverride(BaseModel):
    """One family's entry in a tasks file; unknown fields are errors so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    meta_prompt: str | None = None
    judge_prompt: str | None = None

    @field_validator("meta_prompt")
    @classmethod
    def _check_meta(cls, value: str | None) -> str | None:
        if value is not None:
            _check_meta_prompt(value)
        return value

    @field_validator("judge_prompt")
    @classmethod
    def _check_judge(cls, value: str | None) -> str | None:
        if value is not None:
            _check_judge_prompt(value)
        return value


def _check_meta_prompt(text: str) -> None:
    if not text.strip():
        raise ValueError("meta_prompt must not be empty")
    if QUESTION_PLACEHOLDER in text:
        raise ValueError(
            f"meta_prompt must not contain {QUESTION_PLACEHOLDER}: the question is appended to it"
        )


def _check_judge_prompt(text: str) -> None:
    if not text.strip():
        raise ValueError("judge_prompt must not be empty")
    if QUESTION_PLACEHOLDER not in text:
        raise ValueError(f"judge_prompt must contain {QUESTION_PLACEHOLDER} where the question goes")


# ------------------------------------------------------------------------------------------- registry


class TaskRegistry:
    """The task families a service knows, and the prompt builders every component shares."""

    def __init__(self, families: Mapping[str, TaskFamily]) -> None:
        if not families:
            raise ValueError("a task registry needs at least one family")
        for key, family in families.items():
            if key != family.id:
                raise ValueError(f"task family registered as {key!r} has id {family.id!r}")
            try:
                _check_meta_prompt(family.meta_prompt)
                _check_judge_prompt(family.judge_prompt)
            except ValueError as exc:
                raise ValueError(f"task family {key!r}: {exc}") from None
        self._families: Mapping[str, TaskFamily] = MappingProxyType(dict(families))

    @classmethod
    def default(cls) -> TaskRegistry:
        """The built-in families and prompts (documented in docs/tasks.md)."""
        return cls({family.id: family for family in _DEFAULT_FAMILIES})

    @classmethod
    def from_file(cls, path: str | Path | None) -> TaskRegistry:
        """The defaults with per-family prompt overrides from a JSON file; ``None`` or "" gives the defaults.

        The file maps family ids to ``{"meta_prompt"?, "judge_prompt"?}``. Any problem — unreadable
        file, bad JSON, unknown family id or field, empty prompt, judge prompt without ``{question}`` —
        raises ValueError naming the file and the offending entries, so a bad deployment fails at start-up.
        """
        base = cls.default()
        if path is None or not str(path).strip():
            return base
        where = f"tasks file {str(path)!r}"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{where} cannot be read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object mapping task ids to prompt overrides")
        unknown = [key for key in data if key not in base._families]
        if unknown:
            raise ValueError(
                f"{where}: unknown task famil{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(repr(key) for key in unknown)}; valid: {', '.join(base.ids())}"
            )
        families = dict(base._families)
        problems: list[str] = []
        for task_id, raw in data.items():
            if not isinstance(raw, dict):
                problems.append(f"{task_id}: must be an object with meta_prompt and/or judge_prompt")
                continue
            try:
                override = _FamilyOverride.model_validate(raw)
            except ValidationError as exc:
                for error in exc.errors():
                    field = ".".join(str(part) for part in error["loc"])
                    message = error["msg"].removeprefix("Value error, ")
                    problems.append(f"{task_id}{'.' + field if field else ''}: {message}")
                continue
            changes = override.model_dump(exclude_none=True)
            families[task_id] = replace(families[task_id], **changes)
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        return cls(families)

    def get(self, task_id: str) -> TaskFamily:
        """The family ``task_id`` names; UnknownTaskError (a ValueError listing the valid ids) otherwise."""
        family = self._families.get(task_id) if isinstance(task_id, str) else None
        if family is None:
            raise UnknownTaskError(task_id, self.ids())
        return family

    def ids(self) -> tuple[str, ...]:
        return tuple(self._families)

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and task_id in self._families

    def __iter__(self) -> Iterator[TaskFamily]:
        return iter(self._families.values())

    def editor_prompt(self, task_id: str, question: str) -> str:
        """The exact text fed to the editor: ``meta_prompt + " " + question`` (outer whitespace trimmed).

        This is the only place it is built: serving, SFT and RL all call it, so train and serve agree.
        """
        family = self.get(task_id)
        return f"{family.meta_prompt.strip()} {question.strip()}".rstrip()

    def judge_prompt(self, task_id: str, question: str) -> str:
        """The judge's prompt with the question filled in; it asks for a single 1/0 verdict.

        The judge is sent the original image first and the edited image second, as the prompt says.
        """
        return self.get(task_id).judge_prompt.replace(QUESTION_PLACEHOLDER, question.strip())
