"""Reward metrics: queries/s by source (cache hit rate), backend latency and failures, queue depth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from etchr.metrics import LATENCY_BUCKETS, ServiceMetrics
from etchr.queue import JobQueue


class RewardMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("reward", registry)
        self.queue: JobQueue | None = None  # read on scrape
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
        self.failures = Counter(
            "etchr_reward_failures_total",
            "Queries that failed after retries, by error type and backend",
            ["type", "backend"],
            registry=self.registry,
        )
        self.queue_waiting = Gauge(
            "etchr_reward_queue_waiting", "Queries in the stream not yet picked up", registry=self.registry
        )
        self.queue_running = Gauge(
            "etchr_reward_queue_running",
            "Queries delivered to a worker and not yet acked",
            registry=self.registry,
        )

    async def refresh(self) -> None:
        if self.queue is None:
            return
        depth = await self.queue.depth()
        self.queue_waiting.set(depth.waiting)
        self.queue_running.set(depth.running)
