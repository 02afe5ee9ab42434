"""Verifier metrics: calls per stage, speculative calls (used, cancelled, thrown away) and their extra tokens,
verdicts (and how they were read), truncated replies, fallback rates, routing decisions, stage latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from etchr.metrics import LATENCY_BUCKETS, ServiceMetrics


class VerifierMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("verifier", registry)
        self.mllm_calls = Counter(
            "etchr_verifier_mllm_calls_total",
            "MLLM requests by stage (route, verify, reason_edit, reason_direct)",
            ["stage"],
            registry=self.registry,
        )
        self.speculative_calls = Counter(
            "etchr_verifier_speculative_calls_total",
            "Speculative MLLM calls (reason_direct while the edit is made, reason_edit while the judge reads "
            "it) by outcome: used, cancelled (stopped before its reply came), discarded (its reply came and "
            "was thrown away), failed (an error no answer needed); their sum is the calls made",
            ["stage", "outcome"],
            registry=self.registry,
        )
        self.speculative_extra_tokens = Counter(
            "etchr_verifier_speculative_extra_tokens_total",
            "Completion tokens of speculative replies that came back and were thrown away (discarded)",
            ["stage"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "etchr_verifier_stage_seconds",
            "Latency of each EVR stage (route, edit, verify, reason, total)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.verdicts = Counter(
            "etchr_verifier_verdicts_total",
            "Judge verdicts on edits (reliable, unreliable, unparseable)",
            ["verdict"],
            registry=self.registry,
        )
        self.verdict_causes = Counter(
            "etchr_verifier_verdict_causes_total",
            "Judge replies by how they were read: yes, no, or why not reliable (disagree, hedge, none, "
            "truncated)",
            ["cause"],
            registry=self.registry,
        )
        self.truncated = Counter(
            "etchr_verifier_truncated_total",
            "MLLM replies cut at max_tokens, by stage and whether they still gave a verdict/answer "
            "(used, unusable)",
            ["stage", "outcome"],
            registry=self.registry,
        )
        self.answers = Counter(
            "etchr_verifier_answers_total",
            "Answers by mode and whether the edit was used",
            ["mode", "used_edit"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "etchr_verifier_fallbacks_total",
            "Answers that fell back to the original image, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.routes = Counter(
            "etchr_verifier_route_total",
            "Automatic routing decisions by family and source (model or cache)",
            ["task", "source"],
            registry=self.registry,
        )
