"""Reward queries: what one MLLM question is, its content digest, and how a worker answers it.

A query is one (kind, images, prompt, sampling) asked K times:
  - ``guidance`` (R_guid): U sees (original, edit) with the verifier's answer prompt; each decoding is matched
    against the ground truth by the shared answer matcher (rules first, an LLM judge for open answers);
  - ``correctness`` (R_corr): J sees (original, edit) with the family's judge prompt; each decoding is a 1/0
    verdict, unparseable counting as 0;
  - ``base`` (Eq. 1): U sees the original alone.
The score is the fraction of the K decodings that came out positive (a multiple of 1/K).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from etchr.answers import extract_final_answer, judge_prompt_for_open_answer, match_answer
from etchr.imaging import image_mime
from etchr.mllm import ChatResult, MLLMClient, image_part, parse_verdict
from etchr.prompts import AnswerPrompts
from etchr.protocol.edit import EditTask
from etchr.tasks import TaskRegistry

QueryKind = Literal["guidance", "correctness", "base"]


class Query(BaseModel):
    """The stream payload of one query (its images travel beside it as binary fields image0, image1)."""

    kind: QueryKind
    task: EditTask
    question: str
    answer: str | None = None
    scorer: str | None = None
    meta: dict[str, Any] | None = None
    k: int = Field(ge=1)


class QueryResult(BaseModel):
    texts: list[str]
    positive: list[bool] = Field(description="per decoding: answered correctly / judged reliable")
    score: float
    requests: int = Field(description="HTTP requests to MLLM backends this query cost")


def _message(text: str, images: Sequence[bytes]) -> dict[str, Any]:
    """Images first (as their own media type, no re-encoding), then the text."""
    parts = [image_part(raw, image_mime(raw)) for raw in images]
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
        open_judge: bool,
    ) -> None:
        self.mllm = mllm
        self.judge = judge
        self.tasks = tasks
        self.prompts = prompts
        self.temperature = temperature
        self.judge_temperature = judge_temperature
        self.max_tokens = max_tokens
        self.open_judge = open_judge

    def digest(self, query: Query, images: Sequence[bytes]) -> str:
        """Content address of a query: equal digests are the same question to the same model, so one answer
        serves both (cache and coalescing). Anything that changes the answer is in it."""
        if query.kind == "correctness":
            client, prompt_version = self.judge, self.tasks.get(query.task).version
            temperature = self.judge_temperature
        else:
            client, prompt_version = self.mllm, self.prompts.version
            temperature = self.temperature
        key = {
            "query": query.model_dump(mode="json"),
            "models": client.labels,
            "judge": self.judge.labels if (self.open_judge and query.kind != "correctness") else None,
            "prompt": prompt_version,
            "temperature": temperature,
            "max_tokens": self.max_tokens,
            "images": [hashlib.sha256(raw).hexdigest() for raw in images],
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    async def run(self, query: Query, images: Sequence[bytes]) -> QueryResult:
        if query.kind == "correctness":
            prompt = self.tasks.judge_prompt(query.task, query.question)
            result = await self.judge.chat(
                [_message(prompt, images)],
                temperature=self.judge_temperature,
                max_tokens=self.max_tokens,
                n=query.k,
            )
            positive = [parse_verdict(text) is True for text in result.texts]
            return _result(result, positive, result.requests)
        if query.kind == "guidance":
            family = self.tasks.get(query.task)
            prompt = self.prompts.with_edit(query.question, family.edit)
        else:
            prompt = self.prompts.direct(query.question)
        result = await self.mllm.chat(
            [_message(prompt, images)], temperature=self.temperature, max_tokens=self.max_tokens, n=query.k
        )
        positive, extra = await self._match_all(query, result.texts)
        return _result(result, positive, result.requests + extra)

    async def _match_all(self, query: Query, texts: Sequence[str]) -> tuple[list[bool], int]:
        """Rules first, the judge only where they cannot decide (open answers): (correct, judge calls)."""
        assert query.answer is not None
        positive: list[bool] = []
        requests = 0
        for text in texts:
            match = match_answer(text, query.answer, scorer=query.scorer or "auto", meta=query.meta)
            if match.correct is None and self.open_judge:
                prompt = judge_prompt_for_open_answer(
                    query.question, extract_final_answer(text), query.answer
                )
                verdict = await self.judge.chat(
                    [{"role": "user", "content": prompt}], temperature=0.0, max_tokens=self.max_tokens
                )
                requests += verdict.requests
                positive.append(parse_verdict(verdict.texts[0]) is True)
            else:
                positive.append(match.correct is True)
        return positive, requests


def _result(chat: ChatResult, positive: list[bool], requests: int) -> QueryResult:
    return QueryResult(
        texts=chat.texts, positive=positive, score=sum(positive) / len(positive), requests=requests
    )
