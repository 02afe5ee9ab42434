"""The open-answer judge: the one fallback for answers the rules cannot decide, for reward and evaluation.

:func:`etchr.answers.match_answer` decides most answers by rule. For an open answer (``Match.correct is
None``) a judge is asked whether the model's final answer means the same as the reference
(:func:`etchr.prompts.judge_prompt_for_open_answer`, greedy, one decoding) and its reply is read by the one
verdict reader (:func:`etchr.verdicts.read_verdict`). The reward service (R_guid, Eq. 1) and ``etchr eval``
both grade through :func:`grade_answer`, each with the max_tokens its own setting configures, so a reward
never disagrees with the evaluation it is meant to improve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from etchr.answers import Match, extract_final_answer, match_answer
from etchr.prompts import judge_prompt_for_open_answer
from etchr.verdicts import Verdict, incomplete_reply, read_verdict

if TYPE_CHECKING:
    from etchr.mllm import MLLMClient

__all__ = ["Gradable", "Graded", "OpenAnswerJudge", "grade_answer"]


class Gradable(Protocol):
    """What a reply is graded against: a manifest row (``etchr.manifest.ManifestRow``) and a reward query are
    both one."""

    @property
    def question(self) -> str: ...

    @property
    def answer(self) -> str | None: ...

    @property
    def scorer(self) -> str | None: ...

    @property
    def meta(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class OpenAnswerJudge:
    """A judge client with its configured reply budget; ``setting`` names the env var that sets it."""

    client: MLLMClient
    max_tokens: int
    setting: str

    async def ask(self, *, question: str, answer_text: str, expected: str) -> tuple[Verdict, int]:
        """Whether the final answer in ``answer_text`` means the same as ``expected``.

        Returns (verdict, HTTP requests made). The judge sees only the final answer, never the reasoning. A
        reply cut at max_tokens before its verdict raises :class:`~etchr.mllm.MLLMIncomplete` naming
        ``setting``, so it is never scored as a "no"; a cut reply that states its verdict is used.
        """
        prompt = judge_prompt_for_open_answer(question, extract_final_answer(answer_text), expected)
        result = await self.client.chat(
            [{"role": "user", "content": prompt}], temperature=0.0, max_tokens=self.max_tokens
        )
        verdict = read_verdict(result.texts[0], truncated=result.was_truncated(0))
        if verdict.cause == "truncated":
            raise incomplete_reply(
                result.backend, wanted="a verdict", max_tokens=self.max_tokens, setting=self.setting
            )
        return verdict, result.requests


@dataclass(frozen=True)
class Graded:
    """One answer graded: by its rule, and by the open-answer judge where the rule could not decide.

    ``correct`` is a rule's yes or the judge's clear yes, nothing else; ``verdict`` is the judge's reading
    when it was asked and ``requests`` the HTTP requests that cost.
    """

    correct: bool
    match: Match
    verdict: Verdict | None = None
    requests: int = 0

    @property
    def undecided(self) -> bool:
        """The rules could not decide and no judge was asked (none configured): counted wrong."""
        return self.match.correct is None and self.verdict is None


async def grade_answer(text: str, row: Gradable, *, judge: OpenAnswerJudge | None) -> Graded:
    """Grade the raw model reply ``text`` against ``row`` (its answer, scorer and meta): rules first, the
    judge (when given) only where they cannot decide. Raises :class:`ValueError` for a row without an answer
    and whatever :func:`match_answer` raises for bad ground truth; :class:`~etchr.mllm.MLLMError` when the
    judge fails."""
    if row.answer is None:
        raise ValueError("the row has no expected answer to grade against")
    match = match_answer(text, row.answer, scorer=row.scorer or "auto", meta=row.meta)
    if match.correct is not None or judge is None:
        return Graded(match.correct is True, match)
    verdict, requests = await judge.ask(question=row.question, answer_text=text, expected=row.answer)
    return Graded(verdict.reliable, match, verdict, requests)
