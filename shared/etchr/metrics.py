"""Prometheus helpers: one registry per app (no global registry), metric names start with ``etchr_``."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from etchr.queue import JobQueue

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    """HTTP metrics every service exports; services subclass it to add their own."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        self.http_requests = Counter(
            "etchr_http_requests_total",
            "HTTP requests by route and status",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "etchr_http_request_duration_seconds",
            "HTTP request latency by route",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(self.service, method, route, str(status)).inc()
        self.http_latency.labels(self.service, method, route).observe(seconds)

    async def refresh(self) -> None:
        """Hook for gauges read on scrape (e.g. queue depth); nothing by default."""

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class QueueGauges:
    """Depth of a job queue, read from Redis on scrape: what autoscalers (KEDA) and alerts watch."""

    def __init__(self, service: str, what: str, registry: CollectorRegistry) -> None:
        self.queue: JobQueue | None = None  # set once the app has connected
        self.waiting = Gauge(
            f"etchr_{service}_queue_waiting", f"{what} in the stream not yet picked up", registry=registry
        )
        self.running = Gauge(
            f"etchr_{service}_queue_running",
            f"{what} delivered to a worker and not yet acked",
            registry=registry,
        )

    async def refresh(self) -> None:
        if self.queue is None:
            return
        depth = await self.queue.depth()
        self.waiting.set(depth.waiting)
        self.running.set(depth.running)
