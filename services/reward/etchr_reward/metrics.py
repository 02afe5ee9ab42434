"""Reward metrics: queries/s by source (cache hit rate), backend latency and failures, judge verdicts by
how they were read, truncated replies, queue depth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from etchr.metrics import LATENCY_BUCKETS, QueueGauges, ServiceMetrics


class RewardMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("reward", registry)
        self.queue_depth = QueueGauges("reward", "Queries", self.registry)
        self.queries = Counter(
            "etchr_reward_queries_total",
            "Queries needed by requests, by kind and source (cache, coalesced, computed)",
            ["kind", "source"],
            registry=self.registry,
        )
        self.mllm_requests = Counter(
            "etchr_reward_mllm_requests_total",
            "HTTP requests workers made to MLLM backends, by query kind",
            ["kind"],
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "etchr_reward_query_seconds",
            "Backend time per query (K decodings, retries included), by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.verdict_causes = Counter(
            "etchr_reward_verdict_causes_total",
            "Judge replies by query kind (correctness: R_corr votes; guidance/base: the open-answer judge) "
            "and how they were read: yes, no, or why not reliable (disagree, hedge, none) - all but yes "
            "count as a negative vote",
            ["kind", "cause"],
            registry=self.registry,
        )
        self.truncated = Counter(
            "etchr_reward_truncated_total",
            "Decodings cut at max_tokens, by query kind and outcome (used: the answer/verdict was stated "
            "before the cut; failed: it was not, so the query failed with 502)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "etchr_reward_failures_total",
            "Queries that failed after retries, by error type and backend",
            ["type", "backend"],
            registry=self.registry,
        )

    async def refresh(self) -> None:
        await self.queue_depth.refresh()
