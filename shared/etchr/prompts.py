"""The answering prompts (direct, with the edit) and the routing prompt, in one versioned, overridable place.

The verifier answers with them and the reward service asks R_guid / Eq. 1 questions with the same words, so
what the RL reward measures is what serving does. The edit judges' prompts live with the task families
(``etchr.tasks``); the open-answer judge's prompt is here too (:data:`OPEN_ANSWER_JUDGE_PROMPT`), versioned
by :data:`OPEN_ANSWER_JUDGE_PROMPT_VERSION`. Placeholders are filled by plain substitution, so any other
braces in a prompt or a question stay literal.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from etchr.tasks import JUDGE_REPLY_CONVENTION, TaskRegistry
from etchr.thinking import strip_thinking

__all__ = [
    "EDIT",
    "EXPECTED",
    "FAMILIES",
    "OPEN_ANSWER_JUDGE_PROMPT",
    "OPEN_ANSWER_JUDGE_PROMPT_VERSION",
    "PREDICTION",
    "QUESTION",
    "AnswerPrompts",
    "judge_prompt_for_open_answer",
]

QUESTION = "{question}"
EDIT = "{edit}"
FAMILIES = "{families}"
EXPECTED = "{expected}"
PREDICTION = "{prediction}"

_FINAL = "Think briefly if needed, then give the final answer as \\boxed{...}."


class AnswerPrompts(BaseModel):
    """Defaults are documented in docs/prompts.md; ``ETCHR_PROMPTS_FILE`` overrides any of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason_direct: str = f"Question: {QUESTION}\n\n{_FINAL}"
    # The authors' recipe in meaning: say which image is which, and have U rely on the helper view. (For
    # jigsaw the original is the shuffled puzzle and for 3D the new view differs on purpose: "trust the
    # original" would point U away from the very evidence the edit exists to give.)
    reason_with_edit: str = (
        "You are given two images. The first is the original image. The second is a helper view that an "
        f"image editor made from it for this question; it shows {EDIT}. Focus on the helper view and answer "
        "from what it shows; use the original only for details the helper view leaves out.\n\n"
        f"Question: {QUESTION}\n\n{_FINAL}"
    )
    route: str = (
        "An image editor can prepare a helper view before a visual question is answered. "
        "Which kind of helper view would help most with the question below?\n"
        f"{FAMILIES}\n"
        "- none: no edit would help; answer directly from the image.\n\n"
        f"Question: {QUESTION}\n\n"
        "Reply with exactly one word from: {choices}."
    )

    @model_validator(mode="after")
    def _placeholders(self) -> AnswerPrompts:
        required = {
            "reason_direct": [QUESTION],
            "reason_with_edit": [QUESTION],
            "route": [QUESTION, FAMILIES],
        }
        for name, placeholders in required.items():
            for placeholder in placeholders:
                if placeholder not in getattr(self, name):
                    raise ValueError(f"prompt {name!r} must contain {placeholder}")
        return self

    @property
    def version(self) -> str:
        """Short content hash, so caches (e.g. routing decisions) never mix prompt versions."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    @classmethod
    def from_file(cls, path: str | Path | None) -> AnswerPrompts:
        if not path:
            return cls()
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"bad prompts file {path}: {exc}") from exc

    def direct(self, question: str) -> str:
        return self.reason_direct.replace(QUESTION, question)

    def with_edit(self, question: str, edit: str) -> str:
        return self.reason_with_edit.replace(EDIT, edit).replace(QUESTION, question)

    def routing(self, question: str, tasks: TaskRegistry) -> str:
        families = "\n".join(f"- {family.id}: {family.edit}" for family in tasks)
        choices = ", ".join([*tasks.ids(), "none"])
        return (
            self.route.replace(FAMILIES, families).replace("{choices}", choices).replace(QUESTION, question)
        )


# ------------------------------------------------------------------------------------- open-answer judge

# What a judge is asked when the answer rules cannot decide (an open answer): does the model's final answer
# mean the same as the reference? One fixed wording (not in the prompts file): R_guid, Eq. 1 and
# ``etchr eval`` must ask the same judge the same question (etchr.open_answer_judge asks it).
OPEN_ANSWER_JUDGE_PROMPT = (
    "You are grading a model's answer to a question against the reference answer.\n\n"
    f"Question: {QUESTION}\n\n"
    f"Reference answer: {EXPECTED}\n\n"
    f"Model's answer: {PREDICTION}\n\n"
    "Does the model's answer mean the same as the reference answer: the same object, value or claim, "
    "allowing for different wording, formatting or extra explanation that does not contradict it? "
    "Answer 0 if it names something different, is incomplete, hedges between several answers or "
    "contradicts the reference.\n\n"
    f"{JUDGE_REPLY_CONVENTION}"
)
# 12 hex digits hashing the prompt, like :attr:`AnswerPrompts.version`: the reward cache keys open-answer
# verdicts on it, so a changed wording never reuses verdicts given to the old one.
OPEN_ANSWER_JUDGE_PROMPT_VERSION = hashlib.sha256(OPEN_ANSWER_JUDGE_PROMPT.encode()).hexdigest()[:12]
_OPEN_ANSWER_FIELDS = re.compile("|".join(re.escape(field) for field in (QUESTION, EXPECTED, PREDICTION)))


def judge_prompt_for_open_answer(question: str, prediction: str, expected: str) -> str:
    """:data:`OPEN_ANSWER_JUDGE_PROMPT` filled in: does the prediction mean the same as the reference?

    Used when :func:`etchr.answers.match_answer` returns ``correct=None``. Reasoning blocks are dropped from
    the prediction (they cost tokens and can sway the judge); the reply convention is the other judges'
    (``etchr.tasks.JUDGE_REPLY_CONVENTION``). Filled in one pass, so braces in the texts stay literal.
    """
    values = {
        QUESTION: question.strip(),
        EXPECTED: expected.strip(),
        PREDICTION: strip_thinking(prediction) or "(no answer)",
    }
    return _OPEN_ANSWER_FIELDS.sub(lambda found: values[found.group(0)], OPEN_ANSWER_JUDGE_PROMPT)
