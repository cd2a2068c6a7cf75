"""A campaign's readout from its counters: each group's figures, the uplift of treatment over
control with its 95% confidence interval, the increments, the cost and the return.

The counters are what `services.attribution.model.fields_of` adds up over a campaign's trials
(`<final|open>|<group>|<measure>`, money in cents), and the per-customer sums of squares of
`services.attribution.model.tally_fields` (`<all|final>|<group>|<measure>`). Figures that have
no meaning (a rate without trials, an uplift without a control group, a return without a cost)
are None, never a number.

The trials of one customer are not independent: a customer who buys often converts on every
reminder, one who never buys on none. The interval therefore counts customers, not trials, as
the independent units: each group's conversion rate is a ratio estimator over its customers,
whose cluster-robust variance, divided by the binomial variance of as many independent trials,
is the group's *design effect* d (1 when every customer had one trial). The Wilson intervals
behind Newcombe's interval are taken at the effective sizes (trials / d, converted / d).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Figures", "Readout", "design_effect", "readout", "readout_record", "two_proportion_ci", "wilson"]

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


@dataclass(frozen=True, slots=True)
class Figures:
    trials: int = 0
    converted: int = 0
    orders: int = 0
    revenue: float = 0.0
    cost: float = 0.0
    customers: int = 0  # with a trial (treatment and control groups only)
    design_effect: float = 1.0  # how much one customer's trials move together (see the module)

    @property
    def rate(self) -> float | None:
        return self.converted / self.trials if self.trials else None

    @property
    def average_order_value(self) -> float | None:
        return self.revenue / self.orders if self.orders else None

    @property
    def revenue_per_trial(self) -> float | None:
        return self.revenue / self.trials if self.trials else None

    def as_dict(self, *, per_customer: bool = True) -> dict[str, Any]:
        """`per_customer`: False for the interaction buckets, which keep no customers, cost or
        design effect (those read None, not 0)."""
        out = asdict(self)
        out.update(conversion_rate=self.rate, average_order_value=self.average_order_value)
        if not per_customer:
            out.update(customers=None, cost=None, design_effect=None)
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
        t, c = self.treatment, self.control
        return two_proportion_ci(t.converted, t.trials, c.converted, c.trials,
                                 design_effects=(t.design_effect, c.design_effect))  # fmt: skip

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
                "interacting": self.interacting.as_dict(per_customer=False),
                "not_interacting": self.not_interacting.as_dict(per_customer=False),
            },
        }


def wilson(x: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion x / n (n > 0; effective sizes may be fractions)."""
    centre = (x + z * z / 2) / (n + z * z)
    half = z * math.sqrt(x * (n - x) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def two_proportion_ci(
    x1: int, n1: int, x2: int, n2: int, z: float = Z95, *, design_effects: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float] | None:
    """The confidence interval of p1 - p2 by Newcombe's hybrid score method (from the two Wilson
    intervals), None when a group has no trials. Unlike the textbook Wald interval it keeps its
    coverage with few trials or few conversions: a control group with no conversion does not
    make the interval collapse onto the treatment's spread alone. `design_effects`: each group's
    (see the module); its Wilson interval is taken at the effective size."""
    if not n1 or not n2:
        return None
    p1, p2 = x1 / n1, x2 / n2
    d1, d2 = design_effects
    (l1, u1), (l2, u2) = wilson(x1 / d1, n1 / d1, z), wilson(x2 / d2, n2 / d2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def design_effect(trials: int, converted: int, trials_sq: int, converted_sq: int, cross: int) -> float:
    """The cluster-robust variance of the rate converted / trials over customers (each with n_i
    trials and y_i conversions; the sums of n_i², y_i² and n_i·y_i given), divided by the
    binomial variance of `trials` independent trials; at least 1. 1 when it cannot be told (no
    sums kept, or a rate of 0 or 1)."""
    if not trials or not trials_sq:
        return 1.0
    p = converted / trials
    binomial = trials * p * (1 - p)
    if binomial <= 0:
        return 1.0
    spread = converted_sq - 2 * p * cross + p * p * trials_sq  # sum of (y_i - p n_i)^2
    return max(1.0, round(spread / binomial, 9))  # 1.0000000000000002 is 1


def _figures(counters: Mapping[str, int], bucket: str, statuses: tuple[str, ...]) -> Figures:
    def total(measure: str) -> int:
        return sum(int(counters.get(f"{s}|{bucket}|{measure}", 0)) for s in statuses)

    whole = "final" if statuses == ("final",) else "all"  # the sums of squares are kept for both

    def squares(measure: str) -> int:
        return int(counters.get(f"{whole}|{bucket}|{measure}", 0))

    trials, converted = total("trials"), total("converted")
    effect = design_effect(trials, converted, squares("trials_sq"), squares("converted_sq"), squares("cross"))
    return Figures(trials, converted, total("orders"), total("revenue") / 100, total("cost") / 100,
                   squares("customers"), effect)  # fmt: skip


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


def _figures_record(f: Figures) -> dict[str, Any]:
    return {"trials": f.trials, "converted": f.converted, "customers": f.customers, "orders": f.orders,
            "revenue": f.revenue, "cost": f.cost, "design_effect": f.design_effect}  # fmt: skip


def _readout_record(r: Readout) -> dict[str, Any]:
    ci = r.uplift_ci95
    return {
        "treatment": _figures_record(r.treatment),
        "control": _figures_record(r.control),
        "interacting": _figures_record(r.interacting),
        "not_interacting": _figures_record(r.not_interacting),
        "uplift": r.uplift,
        "uplift_ci_low": None if ci is None else ci[0],
        "uplift_ci_high": None if ci is None else ci[1],
        "relative_uplift": r.relative_uplift,
        "incremental_conversions": r.incremental_conversions,
        "incremental_revenue": r.incremental_revenue,
        "roi": r.roi,
        "final_trials": r.final_trials,
        "open_trials": r.open_trials,
    }


def readout_record(tenant: str, campaign_id: str, counters: Mapping[str, int], *, rule: str, window_days: int,
                   as_of: int) -> dict[str, Any]:  # fmt: skip
    """The `crm.attribution.CampaignReadout` record of a campaign's counters: every trial, and
    the final ones alone."""
    every = readout(campaign_id, counters, rule=rule, window_days=window_days)
    final = readout(campaign_id, counters, rule=rule, window_days=window_days, final_only=True)
    return {"tenant": tenant, "campaign_id": campaign_id, "rule": rule, "window_days": window_days, "as_of": as_of,
            "all": _readout_record(every), "final": _readout_record(final)}  # fmt: skip
