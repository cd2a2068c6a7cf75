"""Stager metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import PREFIX

__all__ = ["StagerMetrics"]


class StagerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            f"{PREFIX}stager_events", "Events applied to customer state", ["tenant"], registry=registry
        )
        self.repeats = Counter(
            f"{PREFIX}stager_repeated_events", "Events ignored as repeats of an applied event", registry=registry
        )
        self.redelivered = Counter(
            f"{PREFIX}stager_redelivered_messages",
            "Messages skipped because their effects were already applied",
            registry=registry,
        )
        self.late = Counter(
            f"{PREFIX}stager_late_events", "Events older than the watermark when they arrived", registry=registry
        )
        self.invalid = Counter(f"{PREFIX}stager_invalid_messages", "Messages sent to the DLQ", registry=registry)
        self.transitions = Counter(
            f"{PREFIX}stager_transitions", "Stage transitions emitted", ["model"], registry=registry
        )
        self.timers_fired = Counter(
            f"{PREFIX}stager_timers_fired", "Customers re-evaluated by a timer", registry=registry
        )
        self.watermark = Gauge(
            f"{PREFIX}stager_watermark_seconds", "Event-time watermark", ["tenant"], registry=registry
        )
        self.batch = Histogram(
            f"{PREFIX}stager_batch_duration_seconds",
            "Time to apply one batch",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
