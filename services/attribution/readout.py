"""A campaign's readout from its counters: each group's figures, the uplift of treatment over
control with its 95% confidence interval, the increments, the cost and the return.

The counters are what `services.attribution.model.fields_of` adds up over a campaign's trials
(`<final|open>|<group>|<measure>`, money in cents). Figures that have no meaning (a rate without
trials, an uplift without a control group, a return without a cost) are None, never a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Figures", "Readout", "readout", "two_proportion_ci", "wilson"]

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


@dataclass(frozen=True, slots=True)
class Figures:
    trials: int = 0
    converted: int = 0
    orders: int = 0
    revenue: float = 0.0
    cost: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.converted / self.trials if self.trials else None

    @property
    def average_order_value(self) -> float | None:
        return self.revenue / self.orders if self.orders else None

    @property
    def revenue_per_trial(self) -> float | None:
        return self.revenue / self.trials if self.trials else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(conversion_rate=self.rate, average_order_value=self.average_order_value)
        return out


@dataclass(frozen=True, slots=True)
class Readout:
    campaign_id: str
    rule: str
    window_days: int
    treatment: Figures
    control: Figures
    interacting: Figures
    not_interacting: Figures
    final_trials: int
    open_trials: int

    @property
    def uplift(self) -> float | None:
        """Treatment conversion rate minus control conversion rate."""
        t, c = self.treatment.rate, self.control.rate
        return None if t is None or c is None else t - c

    @property
    def uplift_ci95(self) -> tuple[float, float] | None:
        return two_proportion_ci(self.treatment.converted, self.treatment.trials,
                                 self.control.converted, self.control.trials)  # fmt: skip

    @property
    def relative_uplift(self) -> float | None:
        c = self.control.rate
        return None if self.uplift is None or not c else self.uplift / c

    @property
    def incremental_conversions(self) -> float | None:
        return None if self.uplift is None else self.uplift * self.treatment.trials

    @property
    def incremental_revenue(self) -> float | None:
        t, c = self.treatment.revenue_per_trial, self.control.revenue_per_trial
        return None if t is None or c is None else (t - c) * self.treatment.trials

    @property
    def cost(self) -> float:
        return self.treatment.cost

    @property
    def roi(self) -> float | None:
        """(incremental revenue - cost) / cost; None without a cost or without a control group."""
        gain = self.incremental_revenue
        return None if gain is None or not self.cost else (gain - self.cost) / self.cost

    def as_dict(self) -> dict[str, Any]:
        ci = self.uplift_ci95
        return {
            "campaign_id": self.campaign_id,
            "rule": self.rule,
            "window_days": self.window_days,
            "treatment": self.treatment.as_dict(),
            "control": self.control.as_dict(),
            "conversion_rate_treatment": self.treatment.rate,
            "conversion_rate_control": self.control.rate,
            "uplift": self.uplift,
            "uplift_ci95": None if ci is None else [ci[0], ci[1]],
            "relative_uplift": self.relative_uplift,
            "incremental_conversions": self.incremental_conversions,
            "incremental_revenue": self.incremental_revenue,
            "cost": self.cost,
            "roi": self.roi,
            "final_trials": self.final_trials,
            "open_trials": self.open_trials,
            "interaction": {
                "interacting": self.interacting.as_dict(),
                "not_interacting": self.not_interacting.as_dict(),
            },
        }


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion x / n (n > 0)."""
    centre = (x + z * z / 2) / (n + z * z)
    half = z * math.sqrt(x * (n - x) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def two_proportion_ci(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float] | None:
    """The confidence interval of p1 - p2 by Newcombe's hybrid score method (from the two Wilson
    intervals), None when a group has no trials. Unlike the textbook Wald interval it keeps its
    coverage with few trials or few conversions: a control group with no conversion does not
    make the interval collapse onto the treatment's spread alone."""
    if not n1 or not n2:
        return None
    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = wilson(x1, n1, z), wilson(x2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _figures(counters: Mapping[str, int], bucket: str, statuses: tuple[str, ...]) -> Figures:
    def total(measure: str) -> int:
        return sum(int(counters.get(f"{s}|{bucket}|{measure}", 0)) for s in statuses)

    return Figures(total("trials"), total("converted"), total("orders"), total("revenue") / 100, total("cost") / 100)


def readout(
    campaign_id: str, counters: Mapping[str, int], *, rule: str = "", window_days: int = 7, final_only: bool = False
) -> Readout:
    """The readout of a campaign from its counters; `final_only`: only trials whose window ended."""
    statuses = ("final",) if final_only else ("final", "open")

    def trials(status: str) -> int:
        return sum(_figures(counters, group, (status,)).trials for group in ("treatment", "control"))

    return Readout(
        campaign_id=campaign_id,
        rule=rule,
        window_days=window_days,
        treatment=_figures(counters, "treatment", statuses),
        control=_figures(counters, "control", statuses),
        interacting=_figures(counters, "interacting", statuses),
        not_interacting=_figures(counters, "not_interacting", statuses),
        final_trials=trials("final"),
        open_trials=trials("open"),
    )
