"""An independent batch computation of the campaign counters, written from the definitions in the
README (not from services/attribution): given every touch (the trigger topics' records) and
every paid order, the trials, conversions, orders, revenue and cost of each campaign and group.

Per customer and campaign, touches in (time, trigger id) order; a touch's window is
(deliver_after, deliver_after + W]; it converts with any paid order in it; its orders and
revenue are the window's orders not yet counted by an earlier touch of the campaign; a treated
touch costs its channel's price, plus its offer's cost when a window order used a coupon. Per
campaign and group also the customers with a trial and the sums over them of n², y² and n·y (n
trials, y of them converted), which the readout's interval is built on."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CHANNEL_CENTS", "PER_CUSTOMER", "Counts", "campaign_counts", "engine_figures"]

PER_CUSTOMER = ("customers", "trials_sq", "converted_sq", "cross")  # counted over all trials, not by status

DAY_MS = 86_400_000
CHANNEL_CENTS = {"sms": 5, "email": 1, "push": 0, "in_app": 0}  # the defaults: 0.05, 0.01, 0, 0
HELD_OUT = ("holdout", "holdout:global")
# campaign -> group -> measure -> total (money in cents)
Counts = dict[str, dict[str, dict[str, int]]]


def campaign_counts(
    decisions: Iterable[Mapping[str, Any]],
    orders: Iterable[tuple[str, str, int, float, bool]],
    window_days: int = 7,
) -> Counts:
    """`decisions`: trigger records (deliver_after in ms); `orders`: (customer, order id, time ms,
    amount, coupon used) of the paid orders."""
    window = window_days * DAY_MS
    by_customer: defaultdict[str, list[tuple[int, str, int, bool]]] = defaultdict(list)
    for customer, order_id, at, amount, coupon in orders:
        by_customer[customer].append((at, order_id, round(amount * 100), coupon))
    for found in by_customer.values():
        found.sort()
    touches: defaultdict[tuple[str, str], list[tuple[int, str, str, str, int]]] = defaultdict(list)
    for d in decisions:
        if d["suppressed"] is not None and d["suppressed"] not in HELD_OUT:
            continue
        group = "treatment" if d["suppressed"] is None else "control"
        offer = round(d["offer"]["cost"] * 100) if d["offer"] and group == "treatment" else 0
        touches[(d["customer_id"], d["campaign_id"])].append(
            (d["deliver_after"], d["trigger_id"], group, d["channel"], offer)
        )
    out: Counts = {}
    for (customer, campaign), mine in touches.items():
        bought = by_customer.get(customer, [])
        times = [t for t, *_ in bought]
        used: set[str] = set()
        tally: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])  # group -> this customer's trials, converted
        for at, _tid, group, channel, offer in sorted(mine):
            inside = bought[bisect.bisect_right(times, at) : bisect.bisect_right(times, at + window)]
            fresh = [o for o in inside if o[1] not in used]
            used.update(o[1] for o in fresh)
            totals = out.setdefault(campaign, {}).setdefault(group, defaultdict(int))
            totals["trials"] += 1
            totals["converted"] += bool(inside)
            totals["orders"] += len(fresh)
            totals["revenue"] += sum(o[2] for o in fresh)
            if group == "treatment":
                totals["cost"] += CHANNEL_CENTS[channel] + (offer if any(o[3] for o in inside) else 0)
            tally[group][0] += 1
            tally[group][1] += bool(inside)
        for group, (n, y) in tally.items():  # the customer as one unit of its group
            totals = out[campaign][group]
            totals["customers"] += 1
            totals["trials_sq"] += n * n
            totals["converted_sq"] += y * y
            totals["cross"] += n * y
    return {c: {g: dict(v) for g, v in groups.items()} for c, groups in out.items()}


def engine_figures(counters: Mapping[str, int], group: str, measures: Iterable[str]) -> dict[str, int]:
    """The engine's figures of `group` from a campaign's Redis counters, as `campaign_counts`
    gives them: final and provisional trials together."""
    return {
        m: counters.get(f"all|{group}|{m}", 0)
        if m in PER_CUSTOMER
        else sum(counters.get(f"{s}|{group}|{m}", 0) for s in ("final", "open"))
        for m in measures
    }
