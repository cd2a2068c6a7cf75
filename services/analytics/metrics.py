"""Analytics metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.metrics import PREFIX, LoopMetrics

__all__ = ["AnalyticsMetrics"]


class AnalyticsMetrics(LoopMetrics):
    """The loop's metrics (crm_analytics_...) and the history's own: transitions kept, days closed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "analytics", late="late_transitions", timers="timer_customers")
        name = f"{PREFIX}analytics_"
        self.kept = Counter(f"{name}transitions", "Stage transitions added to the history", ["model"],
                            registry=registry)  # fmt: skip
        self.requests = Counter(f"{name}campaign_requests", "Audience members sent to the triggers by campaign runs",
                                ["campaign"], registry=registry)  # fmt: skip
        self.failed_runs = Counter(f"{name}campaign_run_failures", "Campaign runs whose audience could not be answered",
                                   ["campaign"], registry=registry)  # fmt: skip
        self.closed = Counter(
            f"{name}days_closed", "Days with changes closed into bitmaps", ["model"], registry=registry
        )
