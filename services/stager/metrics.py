"""Stager metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.metrics import PREFIX, LoopMetrics

__all__ = ["StagerMetrics"]


class StagerMetrics(LoopMetrics):
    """The loop's metrics (crm_stager_...) and the stager's own: events and transitions."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "stager", late="late_events", timers="timers_fired",
                         timers_help="Customers re-evaluated by a timer")  # fmt: skip
        self.events = Counter(
            f"{PREFIX}stager_events", "Events applied to customer state", ["tenant"], registry=registry
        )
        self.transitions = Counter(
            f"{PREFIX}stager_transitions", "Stage transitions emitted", ["model"], registry=registry
        )
