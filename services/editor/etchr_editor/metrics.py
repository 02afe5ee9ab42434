"""Editor metrics: what ops scale and alert on (queue depth, batch sizes, wait vs inference time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from etchr.metrics import LATENCY_BUCKETS, QueueGauges, ServiceMetrics


class EditorMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("editor", registry)
        self.queue_depth = QueueGauges("editor", "Edit jobs", self.registry)
        self.batch_rows = Histogram(
            "etchr_editor_batch_rows",
            "Images denoised together in one sampler call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "etchr_editor_queue_wait_seconds",
            "Time from enqueue to a worker starting the job",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.infer = Histogram(
            "etchr_editor_infer_seconds",
            "Sampler time per batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.edits = Counter(
            "etchr_editor_edits_total",
            "Edited images produced (rate() gives edits/s)",
            registry=self.registry,
        )
        self.jobs = Counter(
            "etchr_editor_jobs_total", "Jobs finished by outcome", ["outcome"], registry=self.registry
        )
        self.rejected = Counter(
            "etchr_editor_rejected_total", "Edits refused because the queue was full", registry=self.registry
        )

    async def refresh(self) -> None:
        await self.queue_depth.refresh()
