"""Reward queries: what one MLLM question is, its content digest, and how a worker answers it.

A query is one (kind, images, prompt, sampling) asked K times:
  - ``guidance`` (R_guid): U sees (original, edit) with the verifier's answer prompt; each decoding is matched
    against the ground truth by the shared answer matcher (rules first, the open-answer judge for open
    answers);
  - ``correctness`` (R_corr): J sees (original, edit), or the edit alone (``correctness_images``), with the
    family's judge prompt; each decoding is a verdict read by the one verdict reader (``etchr.verdicts``):
    only a clear yes counts, so a reply that disagrees with itself, hedges or has no verdict is a negative
    vote (counted by cause in the metrics);
  - ``base`` (Eq. 1): U sees the original alone.
The score is the fraction of the K decodings that came out positive (a multiple of 1/K).

A decoding cut at max_tokens still counts when it states its answer or verdict; one that does not fails the
whole query with :class:`~etchr.mllm.MLLMIncomplete` (502, never cached), never a made-up score.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from etchr.answers import explicit_final_answer
from etchr.imaging import MLLMImage
from etchr.mllm import ChatResult, MLLMClient, image_part
from etchr.open_answer_judge import OpenAnswerJudge, grade_answer
from etchr.prompts import OPEN_ANSWER_JUDGE_PROMPT_VERSION, AnswerPrompts
from etchr.protocol.edit import EditTask
from etchr.tasks import JudgeImages, TaskRegistry
from etchr.verdicts import READER_VERSION, Verdict, incomplete_reply, read_verdict

QueryKind = Literal["guidance", "correctness", "base"]

ANSWER_SETTING = "ETCHR_REWARD_MAX_TOKENS"
JUDGE_SETTING = "ETCHR_REWARD_JUDGE_MAX_TOKENS"


@dataclass(frozen=True)
class QueryImage:
    """One image of a query, prepared once per request and shared by every query that shows it: the bytes the
    client sent (their data URL built once, however many queries and decodings send it) and their SHA-256,
    by which queries name it (in their digest and on the stream)."""

    image: MLLMImage
    digest: str

    @classmethod
    def from_bytes(cls, raw: bytes) -> QueryImage:
        return cls(MLLMImage.from_bytes(raw), hashlib.sha256(raw).hexdigest())

    @property
    def data(self) -> bytes:
        return self.image.data


def as_query_image(image: QueryImage | bytes) -> QueryImage:
    return image if isinstance(image, QueryImage) else QueryImage.from_bytes(image)


class Query(BaseModel):
    """The stream payload of one query (its images travel by digest: ``etchr_reward.jobs``)."""

    kind: QueryKind
    task: EditTask
    question: str
    answer: str | None = None
    scorer: str | None = None
    meta: dict[str, Any] | None = None
    k: int = Field(ge=1)
    temperature: float | None = Field(
        default=None, description="overrides the configured sampling temperature (Eq. 1's greedy decoding)"
    )
    correctness_images: JudgeImages = Field(
        default="both", description="correctness only: the judge sees [original, edit] or the edit alone"
    )


class QueryResult(BaseModel):
    texts: list[str]
    positive: list[bool] = Field(description="per decoding: answered correctly / judged reliable")
    score: float
    requests: int = Field(description="HTTP requests to MLLM backends this query cost")
    verdicts: dict[str, int] = Field(
        default_factory=dict,
        description="judge replies by how they were read (R_corr votes; open-answer judge calls)",
    )
    truncated: int = Field(default=0, description="decodings cut at max_tokens that still gave their answer")


def _message(text: str, images: Sequence[QueryImage | bytes]) -> dict[str, Any]:
    """Images first (as their own media type, no re-encoding; each data URL built once), then the text."""
    parts = [image_part(as_query_image(image).image) for image in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


class RewardScorer:
    """Answers queries against U (``mllm``) and J (``judge``); components passed in, nothing global."""

    def __init__(
        self,
        *,
        mllm: MLLMClient,
        judge: MLLMClient,
        tasks: TaskRegistry,
        prompts: AnswerPrompts,
        temperature: float,
        judge_temperature: float,
        max_tokens: int,
        judge_max_tokens: int,
        open_judge: bool,
    ) -> None:
        self.mllm = mllm
        self.judge = judge
        self.tasks = tasks
        self.prompts = prompts
        self.temperature = temperature
        self.judge_temperature = judge_temperature
        self.max_tokens = max_tokens
        self.judge_max_tokens = judge_max_tokens
        # The one open-answer fallback (etchr.open_answer_judge), on J with the reward's judge budget; None
        # when open answers are scored by the rules alone (counted wrong).
        self.open_answer_judge = (
            OpenAnswerJudge(judge, judge_max_tokens, JUDGE_SETTING) if open_judge else None
        )

    def _temperature(self, query: Query) -> float:
        if query.temperature is not None:
            return query.temperature
        return self.judge_temperature if query.kind == "correctness" else self.temperature

    def digest(self, query: Query, images: Sequence[QueryImage | bytes]) -> str:
        """Content address of a query: equal digests are the same question to the same model, so one answer
        serves both (cache and coalescing). It hashes :meth:`cache_key`."""
        return hashlib.sha256(json.dumps(self.cache_key(query, images), sort_keys=True).encode()).hexdigest()

    def cache_key(self, query: Query, images: Sequence[QueryImage | bytes]) -> dict[str, Any]:
        """Everything that changes a query's answer — the verdict reader's version and the open-answer judge's
        prompt version included, so results read under old rules or asked in old words never return."""
        judged = query.kind == "correctness"
        open_judged = self.open_answer_judge is not None and not judged
        return {
            "query": query.model_dump(mode="json"),
            "models": (self.judge if judged else self.mllm).labels,
            "judge": self.judge.labels if open_judged else None,
            "prompt": self.tasks.get(query.task).version if judged else self.prompts.version,
            "open_judge_prompt": OPEN_ANSWER_JUDGE_PROMPT_VERSION if open_judged else None,
            "reader": READER_VERSION if judged or open_judged else None,
            "temperature": self._temperature(query),
            "max_tokens": self.judge_max_tokens if judged else self.max_tokens,
            "judge_max_tokens": self.judge_max_tokens if open_judged else None,
            "images": [
                image.digest if isinstance(image, QueryImage) else hashlib.sha256(image).hexdigest()
                for image in images
            ],
        }

    async def run(self, query: Query, images: Sequence[QueryImage | bytes]) -> QueryResult:
        if query.kind == "correctness":
            return await self._correctness(query, images)
        if query.kind == "guidance":
            family = self.tasks.get(query.task)
            prompt = self.prompts.with_edit(query.question, family.edit)
        else:
            prompt = self.prompts.direct(query.question)
        result = await self.mllm.chat(
            [_message(prompt, images)],
            temperature=self._temperature(query),
            max_tokens=self.max_tokens,
            n=query.k,
        )
        cut = [i for i in range(len(result.texts)) if result.was_truncated(i)]
        if any(explicit_final_answer(result.texts[i]) is None for i in cut):
            raise incomplete_reply(
                result.backend, wanted="an answer", max_tokens=self.max_tokens, setting=ANSWER_SETTING
            )
        positive, extra, verdicts = await self._match_all(query, result.texts)
        return _result(result, positive, result.requests + extra, verdicts, truncated=len(cut))

    async def _correctness(self, query: Query, images: Sequence[QueryImage | bytes]) -> QueryResult:
        """K judge votes on the edit; only a clear yes is positive."""
        wanted = 2 if query.correctness_images == "both" else 1
        if len(images) != wanted:
            raise ValueError(
                f"a correctness query with correctness_images={query.correctness_images!r} takes {wanted} "
                f"image(s), got {len(images)}"
            )
        prompt = self.tasks.judge_prompt(query.task, query.question, query.correctness_images)
        result = await self.judge.chat(
            [_message(prompt, images)],
            temperature=self._temperature(query),
            max_tokens=self.judge_max_tokens,
            n=query.k,
        )
        verdicts = [
            read_verdict(text, truncated=result.was_truncated(i)) for i, text in enumerate(result.texts)
        ]
        if any(verdict.cause == "truncated" for verdict in verdicts):
            raise incomplete_reply(
                result.backend, wanted="a verdict", max_tokens=self.judge_max_tokens, setting=JUDGE_SETTING
            )
        return _result(
            result,
            [verdict.reliable for verdict in verdicts],
            result.requests,
            verdicts,
            truncated=sum(result.was_truncated(i) for i in range(len(verdicts))),
        )

    async def _match_all(self, query: Query, texts: Sequence[str]) -> tuple[list[bool], int, list[Verdict]]:
        """Rules first, the open-answer judge only where they cannot decide: (correct, judge calls, the
        judge's verdicts)."""
        assert query.answer is not None
        graded = [await grade_answer(text, query, judge=self.open_answer_judge) for text in texts]
        verdicts = [grade.verdict for grade in graded if grade.verdict is not None]
        return [grade.correct for grade in graded], sum(grade.requests for grade in graded), verdicts


def _result(
    chat: ChatResult, positive: list[bool], requests: int, verdicts: Sequence[Verdict], *, truncated: int
) -> QueryResult:
    return QueryResult(
        texts=chat.texts,
        positive=positive,
        score=sum(positive) / len(positive),
        requests=requests,
        verdicts=dict(Counter(verdict.cause for verdict in verdicts)),
        truncated=truncated,
    )
