"""Trigger metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, PREFIX, LoopMetrics

__all__ = ["TriggerMetrics"]


class TriggerMetrics(LoopMetrics):
    """The loop's metrics (crm_triggers_...) and the triggers' own: decisions, inputs, owned
    shards and timer backlog, outbox recoveries and decision latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "triggers", late="late_inputs", timers="timer_customers")
        self.triggers = Counter(
            f"{PREFIX}triggers_decided", "Actions decided for delivery", ["action", "channel"], registry=registry
        )
        self.suppressed = Counter(
            f"{PREFIX}triggers_suppressed", "Decisions suppressed by a guardrail", ["reason"], registry=registry
        )
        self.inputs = Counter(f"{PREFIX}triggers_inputs", "Transitions and events applied", ["kind"], registry=registry)
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
        self.latency = Histogram(
            f"{PREFIX}triggers_decision_latency_seconds",
            "From a message's append to Kafka to its decisions being on Kafka",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.event_to_decision = Histogram(
            f"{PREFIX}triggers_event_to_decision_seconds",
            "From the acceptance of the event behind a decision (at ingest) to the decision being on Kafka",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
