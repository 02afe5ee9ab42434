"""The five ETCHR task families (docs/tasks.md) and the one place prompts are built.

The editor is conditioned on ``meta_prompt + " " + question`` — not on an edit instruction — so the
serving path, the SFT trainer and the RL sampler must build that text identically, or the LoRA sees a
prompt distribution it was never trained on. :meth:`TaskRegistry.editor_prompt` is that single builder;
:meth:`TaskRegistry.judge_prompt` is its counterpart for verification (EVR) and R_corr, in two variants:
the judge sees [original, edit] (``images="both"``) or the edit alone (``images="edit"``, the authors'
R_corr). Every judge prompt ends in the one reply convention, :data:`JUDGE_REPLY_CONVENTION`.

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
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

__all__ = [
    "JUDGE_IMAGES",
    "JUDGE_REPLY_CONVENTION",
    "QUESTION_PLACEHOLDER",
    "TASK_IDS",
    "JudgeImages",
    "TaskFamily",
    "TaskRegistry",
    "UnknownTaskError",
]

TASK_IDS: tuple[str, ...] = ("perception", "chart", "logic", "jigsaw", "3d")
# Where a judge prompt takes the question; filled by plain substitution, so other braces are literal.
QUESTION_PLACEHOLDER = "{question}"
# Which images a judge call sends: [original, edit] in that order, or the edit alone.
JudgeImages = Literal["both", "edit"]
JUDGE_IMAGES: tuple[JudgeImages, ...] = get_args(JudgeImages)
# How every default judge prompt asks for its verdict (EVR and R_corr alike; why: docs/recipe.md). A boxed
# verdict is found unambiguously after any reasoning, whatever numbers the reasoning mentions.
JUDGE_REPLY_CONVENTION = (
    "Think it through briefly if you need to, then end your reply with \\boxed{1} if the answer is yes "
    "or \\boxed{0} if it is no."
)


@dataclass(frozen=True)
class TaskFamily:
    """One task family: what its edit shows, the editor's meta-prompt and the judge's two prompt templates.

    ``judge_prompt`` goes with [original, edit]; ``judge_prompt_edit_only`` with the edit alone.
    """

    id: str
    name: str
    edit: str
    meta_prompt: str
    judge_prompt: str
    judge_prompt_edit_only: str

    @property
    def version(self) -> str:
        """12 hex digits hashing the prompts: changes whenever any prompt changes, so caches key on it."""
        content = "\x00".join((self.id, self.meta_prompt, self.judge_prompt, self.judge_prompt_edit_only))
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]

    def judge_template(self, images: JudgeImages = "both") -> str:
        """The judge prompt template for the images the judge is sent."""
        if images == "both":
            return self.judge_prompt
        if images == "edit":
            return self.judge_prompt_edit_only
        raise ValueError(f"judge images must be one of {', '.join(JUDGE_IMAGES)}, not {images!r}")


class UnknownTaskError(ValueError):
    """A task id that names no family; the message lists the valid ids so a caller can fix the request."""

    def __init__(self, task_id: object, valid: tuple[str, ...]) -> None:
        self.task_id = task_id
        self.valid = valid
        super().__init__(f"unknown task {task_id!r}; valid tasks: {', '.join(valid)}")


# ------------------------------------------------------------------------------------- default prompts

# [original, edit]: the judge is told which image is which, as the images arrive in that order.
_JUDGE_HEAD_BOTH = (
    "You are shown two images. The first is the original image; the second is a helper view made from it "
    "by an image editor to help answer the question below.\n\n"
    f"Question: {QUESTION_PLACEHOLDER}\n\n"
)
# The edit alone (the authors' R_corr): the judge must decide from the helper view by itself.
_JUDGE_HEAD_EDIT = (
    "You are shown one image: a helper view that an image editor made to help answer the question below. "
    "The image it was made from is not shown.\n\n"
    f"Question: {QUESTION_PLACEHOLDER}\n\n"
)
_JUDGE_TAIL = f"\n\n{JUDGE_REPLY_CONVENTION}"


def _judge_prompts(both: str, edit_only: str) -> dict[str, str]:
    """A family's two judge prompts from their criteria: shared head per image set, one reply convention."""
    return {
        "judge_prompt": _JUDGE_HEAD_BOTH + both + _JUDGE_TAIL,
        "judge_prompt_edit_only": _JUDGE_HEAD_EDIT + edit_only + _JUDGE_TAIL,
    }


_DEFAULT_FAMILIES: tuple[TaskFamily, ...] = (
    TaskFamily(
        id="perception",
        name="fine-grained perception",
        edit="a red box around the referent(s) of the question",
        meta_prompt=(
            "Draw a red box around the object(s) the question asks about, so the details needed to answer "
            "it stand out; leave the rest of the image unchanged."
        ),
        **_judge_prompts(
            both=(
                "Does the second image mark the object(s) the question asks about with a red box that "
                "encloses them, so that the information needed to answer the question is clearly visible? "
                "The answer is no if there is no red box, if a box frames the wrong object or misses part "
                "of what is needed, or if the edit altered or hid the content needed to answer."
            ),
            edit_only=(
                "Does this image mark the object(s) the question asks about with a red box that encloses "
                "them, so that the information needed to answer the question is clearly visible? The answer "
                "is no if there is no red box, if a box frames the wrong object or misses part of what is "
                "needed, or if the content needed to answer is hidden or garbled."
            ),
        ),
    ),
    TaskFamily(
        id="chart",
        name="chart understanding",
        edit="a red box around the chart element(s) needed to answer",
        meta_prompt=(
            "Draw a red box around the chart elements (bars, points, lines, labels, legend entries or cells) "
            "needed to answer the question; leave the rest of the chart unchanged."
        ),
        **_judge_prompts(
            both=(
                "Does the second image mark, with red boxes, exactly the chart elements (bars, points, "
                "lines, labels, legend entries or cells) whose values are needed to answer the question, "
                "with their values still readable? The answer is no if there is no red box, if a box frames "
                "the wrong elements or misses a needed one, or if the edit altered the chart's data."
            ),
            edit_only=(
                "Does this chart mark, with red boxes, exactly the chart elements (bars, points, lines, "
                "labels, legend entries or cells) whose values are needed to answer the question, with "
                "their values readable? The answer is no if there is no red box, if a box frames the wrong "
                "elements or misses a needed one, or if the values needed are garbled or unreadable."
            ),
        ),
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
        **_judge_prompts(
            both=(
                "Does the second image show a valid solution path: one continuous line from the start to "
                "the goal that moves only up, down, left or right, never crosses a wall, hole or other "
                "obstacle, and lies on the same layout as the original? The answer is no if there is no "
                "path, if it is broken, diagonal, ends elsewhere or crosses an obstacle, or if the layout "
                "itself was changed."
            ),
            edit_only=(
                "Does this image show a valid solution path: one continuous line from the start to the goal "
                "that moves only up, down, left or right and never crosses a wall, hole or other obstacle? "
                "The answer is no if there is no path, if it is broken, diagonal, ends elsewhere or crosses "
                "an obstacle, or if the layout is garbled."
            ),
        ),
    ),
    TaskFamily(
        id="jigsaw",
        name="jigsaw restoration",
        edit="the shuffled patches restored to the original layout",
        meta_prompt=(
            "Restore the shuffled jigsaw: move every patch back to its original position so the picture is "
            "whole and coherent, without changing the content of any patch."
        ),
        **_judge_prompts(
            both=(
                "The first image is a jigsaw puzzle whose patches were shuffled. Is the second image a "
                "correct restoration of it: every patch of the first image placed back in its original "
                "position, forming one coherent picture, with no patch lost, duplicated, invented or "
                "altered?"
            ),
            edit_only=(
                "The image is meant to be a shuffled jigsaw puzzle put back together. Is it one coherent "
                "picture in which every patch continues its neighbours, with no edges that fail to line up "
                "and no patch missing, duplicated or out of place?"
            ),
        ),
    ),
    TaskFamily(
        id="3d",
        name="3D understanding",
        edit="the scene rendered from the viewpoint the question needs",
        # The released ETCHR checkpoint was trained with exactly this sentence for its 3D family.
        meta_prompt="Imagine a new perspective of the original image that helps answer the question.",
        **_judge_prompts(
            both=(
                "Does the second image show the same scene as the first from a new viewpoint that makes the "
                "objects and spatial relations the question asks about visible, consistent with the "
                "original scene (no objects invented, removed or moved)?"
            ),
            edit_only=(
                "Does this image show a coherent, physically plausible scene from a viewpoint that makes "
                "the objects and spatial relations the question asks about clearly visible?"
            ),
        ),
    ),
)


# ------------------------------------------------------------------------------------------ overrides


class _FamilyOverride(BaseModel):
    """One family's entry in a tasks file; unknown fields are errors so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    meta_prompt: str | None = None
    judge_prompt: str | None = None
    judge_prompt_edit_only: str | None = None

    @field_validator("meta_prompt")
    @classmethod
    def _check_meta(cls, value: str | None) -> str | None:
        if value is not None:
            _check_meta_prompt(value)
        return value

    @field_validator("judge_prompt", "judge_prompt_edit_only")
    @classmethod
    def _check_judge(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _check_judge_prompt(value, str(info.field_name))
        return value


def _check_meta_prompt(text: str) -> None:
    if not text.strip():
        raise ValueError("meta_prompt must not be empty")
    if QUESTION_PLACEHOLDER in text:
        raise ValueError(
            f"meta_prompt must not contain {QUESTION_PLACEHOLDER}: the question is appended to it"
        )


def _check_judge_prompt(text: str, field: str = "judge_prompt") -> None:
    if not text.strip():
        raise ValueError(f"{field} must not be empty")
    if QUESTION_PLACEHOLDER not in text:
        raise ValueError(f"{field} must contain {QUESTION_PLACEHOLDER} where the question goes")


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
                _check_judge_prompt(family.judge_prompt_edit_only, "judge_prompt_edit_only")
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

        The file maps family ids to ``{"meta_prompt"?, "judge_prompt"?, "judge_prompt_edit_only"?}``. Any
        problem — unreadable file, bad JSON, unknown family id or field, empty prompt, judge prompt without
        ``{question}`` — raises ValueError naming the file and the offending entries, so a bad deployment
        fails at start-up.
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
                problems.append(
                    f"{task_id}: must be an object with meta_prompt, judge_prompt and/or "
                    "judge_prompt_edit_only"
                )
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

    def judge_prompt(self, task_id: str, question: str, images: JudgeImages = "both") -> str:
        """The judge's prompt with the question filled in; the defaults ask for a final ``\\boxed{1}/{0}``.

        ``images`` is what the caller sends, and the prompt says so: ``"both"`` = the original first and
        the edit second (EVR, R_corr by default); ``"edit"`` = the edited image alone (the authors' R_corr).
        """
        template = self.get(task_id).judge_template(images)
        return template.replace(QUESTION_PLACEHOLDER, question.strip())
