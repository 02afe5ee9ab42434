"""Automatic routing (``task: auto``): one short MLLM call picks a family or ``none``; cached by question.

The paper leaves routing open. We ask the understanding model itself, text only (cheap, no image tokens),
and cache the decision in Redis keyed by the normalised question, the routing prompt's version and the
model, so replicas share decisions. The cache is best effort: Redis being down costs a call, not an answer.
An unparseable reply routes to ``none`` — answering directly is always safe. A reply cut at max_tokens that
names no family also routes to ``none`` but is not cached (a bigger budget might have named one).

Routing reads a family name, not a verdict, so the verdict reader (``etchr.verdicts``) does not apply here;
reasoning is dropped by the project's one stripper (``etchr.thinking``), as for answers and verdicts.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from etchr.mllm import MLLMClient, user_message
from etchr.prompts import AnswerPrompts
from etchr.tasks import TaskRegistry
from etchr.thinking import strip_thinking
from etchr_verifier.metrics import VerifierMetrics

logger = logging.getLogger("etchr.verifier.routing")

NONE = "none"


@dataclass(frozen=True)
class RouteDecision:
    task: str  # a family id or ``none``
    calls: int  # MLLM requests made (0 from the cache)
    truncated: bool  # the routing reply was cut at max_tokens
    prompt_tokens: int = 0  # the routing call's usage (0 from the cache)
    completion_tokens: int = 0


def parse_route(text: str, choices: tuple[str, ...]) -> str:
    """The first choice named as a whole word in the reply (reasoning dropped); ``none`` otherwise."""
    text = strip_thinking(text).lower()
    pattern = r"(?<![\w-])(" + "|".join(re.escape(choice) for choice in choices) + r")(?![\w-])"
    match = re.search(pattern, text)
    return match.group(1) if match else NONE


class TaskRouter:
    def __init__(
        self,
        mllm: MLLMClient,
        tasks: TaskRegistry,
        prompts: AnswerPrompts,
        metrics: VerifierMetrics,
        *,
        redis: aioredis.Redis,
        key_prefix: str,
        ttl_s: int,
        max_tokens: int,
    ) -> None:
        self.mllm = mllm
        self.tasks = tasks
        self.prompts = prompts
        self.metrics = metrics
        self.redis = redis
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        # A thinking model reasons before it names a family: the budget is the judge's, not a word's worth.
        self.max_tokens = max_tokens

    def _cache_key(self, question: str) -> str:
        normalised = " ".join(question.lower().split())
        digest = hashlib.sha256(
            "\0".join([self.prompts.version, ",".join(self.mllm.labels), normalised]).encode()
        ).hexdigest()
        return f"{self.key_prefix}:verifier:route:{digest}"

    async def route(self, question: str) -> RouteDecision:
        """The family to use (or ``none``), from the cache or one MLLM call."""
        choices = (*self.tasks.ids(), NONE)
        key = self._cache_key(question)
        try:
            cached = await self.redis.get(key)
        except redis.exceptions.RedisError as exc:
            logger.warning("route cache unavailable: %s", exc)
            cached = None
        if cached is not None and cached.decode() in choices:
            task = cached.decode()
            self.metrics.routes.labels(task, "cache").inc()
            return RouteDecision(task, calls=0, truncated=False)
        prompt = self.prompts.routing(question, self.tasks)
        result = await self.mllm.chat([user_message(prompt)], temperature=0.0, max_tokens=self.max_tokens)
        self.metrics.mllm_calls.labels("route").inc(result.requests)
        task = parse_route(result.texts[0], choices)
        truncated = result.was_truncated(0)
        if truncated:
            self.metrics.truncated.labels("route", "unusable" if task == NONE else "used").inc()
        if not (truncated and task == NONE):  # a cut reply naming nothing is no decision to remember
            try:
                await self.redis.set(key, task, ex=self.ttl_s)
            except redis.exceptions.RedisError as exc:
                logger.warning("route cache unavailable: %s", exc)
        self.metrics.routes.labels(task, "model").inc()
        return RouteDecision(
            task,
            calls=result.requests,
            truncated=truncated,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
