"""Attribution metrics, in a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.metrics import PREFIX, LoopMetrics

__all__ = ["AttributionMetrics"]


class AttributionMetrics(LoopMetrics):
    """The loop's metrics (crm_attribution_...) and attribution's own: orders and revenue credited
    to campaigns, retractions, trials that became final, windows still open."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "attribution", late="late_inputs", timers="timer_customers")
        name = f"{PREFIX}attribution_"
        self.credited = Counter(
            f"{name}credited_orders", "Paid orders credited to a campaign's touch", ["campaign"], registry=registry
        )
        self.revenue = Counter(
            f"{name}credited_revenue", "Revenue of the orders credited (currency units)", ["campaign"],
            registry=registry,
        )  # fmt: skip
        self.retracted = Counter(
            f"{name}retracted_orders", "Credited orders taken back after a refund", ["campaign"], registry=registry
        )
        self.finalised = Counter(
            f"{name}finalised_trials", "Trials whose window the watermark passed", ["group"], registry=registry
        )
        self.trials = Counter(f"{name}trials", "Touches taken as trials", ["group"], registry=registry)
        self.open_windows = Gauge(
            f"{name}open_windows", "Trials whose window is still open, over every campaign", ["tenant"],
            registry=registry,
        )  # fmt: skip
