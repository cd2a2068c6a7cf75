"""Stager metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS, PREFIX, LoopMetrics

__all__ = ["StagerMetrics"]


class StagerMetrics(LoopMetrics):
    """The loop's metrics (crm_stager_...) and the stager's own: events, transitions and the time
    from an event's acceptance to the transitions it caused being on Kafka."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "stager", late="late_events", timers="timers_fired",
                         timers_help="Customers re-evaluated by a timer")  # fmt: skip
        self.events = Counter(
            f"{PREFIX}stager_events", "Events applied to customer state", ["tenant"], registry=registry
        )
        self.transitions = Counter(
            f"{PREFIX}stager_transitions", "Stage transitions emitted", ["model"], registry=registry
        )
        self.event_to_transition = Histogram(
            f"{PREFIX}stager_event_to_transition_seconds",
            "From an event's acceptance (its Kafka timestamp, set at ingest) to its transitions being on Kafka",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
