"""Trigger metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import PREFIX

__all__ = ["TriggerMetrics"]


class TriggerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.triggers = Counter(
            f"{PREFIX}triggers_decided", "Actions decided for delivery", ["action", "channel"], registry=registry
        )
        self.suppressed = Counter(
            f"{PREFIX}triggers_suppressed", "Decisions suppressed by a guardrail", ["reason"], registry=registry
        )
        self.inputs = Counter(f"{PREFIX}triggers_inputs", "Transitions and events applied", ["kind"], registry=registry)
        self.redelivered = Counter(
            f"{PREFIX}triggers_redelivered_messages",
            "Messages skipped because their effects were already applied",
            registry=registry,
        )
        self.repeats = Counter(
            f"{PREFIX}triggers_repeated_events", "Events recognised as applied before", registry=registry
        )
        self.late = Counter(
            f"{PREFIX}triggers_late_inputs", "Inputs read after the watermark had passed them", registry=registry
        )
        self.invalid = Counter(f"{PREFIX}triggers_invalid_messages", "Messages sent to the DLQ", registry=registry)
        self.timers_fired = Counter(
            f"{PREFIX}triggers_timer_customers", "Customers whose due timers were fired", registry=registry
        )
        self.owned = Gauge(
            f"{PREFIX}triggers_owned_partitions",
            "Partitions (shards) this worker owns, with their customers' timers",
            registry=registry,
        )
        self.backlog = Gauge(
            f"{PREFIX}triggers_timer_backlog", "Customers with a pending timer, in owned shards", registry=registry
        )
        self.recovered = Counter(
            f"{PREFIX}triggers_outbox_recovered",
            "Decisions left in the outbox by a crash: found already on Kafka, or sent now",
            ["outcome"],
            registry=registry,
        )
        self.conflicts = Counter(
            f"{PREFIX}triggers_write_conflicts",
            "Batches decided again because another worker wrote one of their customers first",
            registry=registry,
        )
        self.watermark = Gauge(
            f"{PREFIX}triggers_watermark_seconds", "Event-time watermark", ["tenant"], registry=registry
        )
        self.batch = Histogram(
            f"{PREFIX}triggers_batch_duration_seconds",
            "Time to apply one batch",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.latency = Histogram(
            f"{PREFIX}triggers_decision_latency_seconds",
            "From a message's append to Kafka to its decisions being on Kafka",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
