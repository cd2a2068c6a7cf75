"""Reports: what the triggers decided for a tenant (read back from the trigger topics), and what
each campaign produced against its control group (from attribution's counters in Redis)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.attribution.readout import Figures, Readout, readout
from services.attribution.store import campaign_counters
from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
)
from services.common.tail import read_topic

__all__ = ["TRIGGER_TOPICS", "campaign_readouts", "campaign_table", "decision_counts"]

TRIGGER_TOPICS = (TOPIC_TRIGGERS_COUPONS, TOPIC_TRIGGERS_REMINDERS, TOPIC_TRIGGERS_OUTREACH, TOPIC_TRIGGERS_SUPPRESSED)


async def decision_counts(bootstrap: str, tenant: str) -> Counter[tuple[str, str]]:
    """(rule, "sent" or "suppressed: <reason>") -> number of decisions on the trigger topics."""
    codec = default_codec()
    counts: Counter[tuple[str, str]] = Counter()
    for topic in TRIGGER_TOPICS:
        async for record in read_topic(bootstrap, topic, codec, idle_timeout=1.0):
            if record.get("tenant") == tenant and "trigger_id" in record:  # not the triggers' progress
                outcome = f"suppressed: {record['suppressed']}" if record["suppressed"] else "sent"
                counts[(record["rule"], outcome)] += 1
    return counts


async def campaign_readouts(redis: Any, tenant: str, *, final_only: bool = False) -> list[Readout]:
    """The readout of every campaign of `tenant` with a trial, by campaign id."""
    out = []
    for campaign, (meta, counters) in (await campaign_counters(redis, tenant)).items():
        rule, _, days = meta.rpartition("|")  # a rule name may hold "|"; the days never do
        out.append(readout(campaign, counters, rule=rule, window_days=int(days or 0), final_only=final_only))
    return out


def campaign_table(readouts: list[Readout]) -> list[str]:
    """A readout per campaign as text lines: both groups, uplift with its interval, money."""
    lines = [
        f"{'campaign':22} {'window':>6} {'treated/cust':>13} {'conv%':>6} {'control/cust':>13} {'conv%':>6} "
        f"{'uplift (95% CI), points':>28} {'incr. revenue':>13} {'cost':>9} {'ROI':>7} {'final':>6}"
    ]
    for r in readouts:
        ci = r.uplift_ci95
        if r.uplift is not None:
            uplift = f"{r.uplift * 100:+.2f}"
        else:
            uplift = "n/a (no control)" if r.treatment.trials else "n/a (none treated)"
        if ci is not None:
            uplift += f" [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]"
        incr = "n/a" if r.incremental_revenue is None else f"{r.incremental_revenue:,.2f}"
        roi = "n/a" if r.roi is None else f"{r.roi:.2f}"
        lines.append(
            f"{r.campaign_id:22} {r.window_days:>5}d {_units(r.treatment):>13} {_pct(r.treatment.rate):>6} "
            f"{_units(r.control):>13} {_pct(r.control.rate):>6} {uplift:>28} {incr:>13} {r.cost:>9,.2f} {roi:>7} "
            f"{r.final_trials:>6}"
        )
    return lines


def _units(group: Figures) -> str:
    """Trials, and the customers they went to (the interval counts customers as the units)."""
    return f"{group.trials}/{group.customers}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}"
