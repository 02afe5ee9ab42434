"""Automatic routing (``task: auto``): one short MLLM call picks a family or ``none``; cached by question.

The paper leaves routing open. We ask the understanding model itself, text only (cheap, no image tokens),
and cache the decision in Redis keyed by the normalised question, the routing prompt's version and the
model, so replicas share decisions. The cache is best effort: Redis being down costs a call, not an answer.
An unparseable reply routes to ``none`` — answering directly is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import re

import redis.asyncio as aioredis
import redis.exceptions

from etchr.mllm import MLLMClient, user_message
from etchr.prompts import AnswerPrompts
from etchr.tasks import TaskRegistry
from etchr_verifier.metrics import VerifierMetrics

logger = logging.getLogger("etchr.verifier.routing")

NONE = "none"


def parse_route(text: str, choices: tuple[str, ...]) -> str:
    """The first choice named as a whole word in the reply (after any <think> block); ``none`` otherwise."""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL | re.IGNORECASE).lower()
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
    ) -> None:
        self.mllm = mllm
        self.tasks = tasks
        self.prompts = prompts
        self.metrics = metrics
        self.redis = redis
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s

    def _cache_key(self, question: str) -> str:
        normalised = " ".join(question.lower().split())
        digest = hashlib.sha256(
            "\0".join([self.prompts.version, ",".join(self.mllm.labels), normalised]).encode()
        ).hexdigest()
        return f"{self.key_prefix}:verifier:route:{digest}"

    async def route(self, question: str) -> tuple[str, int]:
        """(family id or ``none``, MLLM calls made)."""
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
            return task, 0
        prompt = self.prompts.routing(question, self.tasks)
        result = await self.mllm.chat([user_message(prompt)], temperature=0.0, max_tokens=64)
        self.metrics.mllm_calls.labels("route").inc(result.requests)
        task = parse_route(result.texts[0], choices)
        try:
            await self.redis.set(key, task, ex=self.ttl_s)
        except redis.exceptions.RedisError as exc:
            logger.warning("route cache unavailable: %s", exc)
        self.metrics.routes.labels(task, "model").inc()
        return task, result.requests
