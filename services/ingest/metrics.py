"""Ingest metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import PREFIX

__all__ = ["IngestMetrics"]


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.accepted = Counter(
            f"{PREFIX}ingest_events_accepted", "Events accepted and produced", ["type"], registry=registry
        )
        self.rejected = Counter(
            f"{PREFIX}ingest_events_rejected", "Events rejected to the DLQ", ["type", "reason"], registry=registry
        )
        self.dead_letters_lost = Counter(
            f"{PREFIX}ingest_dead_letters_lost",
            "Dead letters of rejected items Kafka did not take (the client still got each reason)",
            registry=registry,
        )
        self.requests = Counter(f"{PREFIX}ingest_requests", "HTTP requests by status code", ["code"], registry=registry)
        self.latency = Histogram(
            f"{PREFIX}ingest_request_duration_seconds",
            "POST /v1/events latency",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
