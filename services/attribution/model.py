"""The attribution definitions as pure functions: (touches, orders, activity, watermark) -> trials.

- A **touch** is a trigger decision sent to the customer (group *treatment*) or held back because
  the customer is in a control group (suppressed `holdout` or `holdout:global`: group *control*).
  Its time is the record's `deliver_after`: when the message went out, or would have.
- Its **window** is (touch time, touch time + W]: an order at the touch time (such as the one that
  caused the touch) is outside, one exactly W later inside.
- Each touch is a **trial** of its campaign. It *converts* when a paid order (not refunded) lies
  in its window. Its *orders* and *revenue* are those paid orders in its window that no earlier
  trial of the same campaign and customer already counted: an order counts once per campaign.
- A treatment trial *costs* its channel's price per message, plus its offer's cost when its
  window holds an order with a coupon code. A control trial costs nothing.
- A treatment trial is *interacting* when the customer browsed, carted or followed in its window
  before converting (before its window's end, if it did not convert).
- A trial is *final* once the watermark has reached its window's end; until then its figures are
  provisional.
- A customer is the unit the groups are drawn by (a hold-out holds a customer out), and one
  customer's trials of a campaign are alike: the counters also keep, per campaign and group, the
  number of customers and the sums of squares of each customer's trials and conversions
  (`tally_fields`), from which the readout widens the uplift's interval by the clustering.

The figures of a customer are a function of the set of its inputs alone: arrival order and
repeats change nothing (a touch is known by its trigger id, an order by its id, and a refund
retracts the order wherever it was counted, whenever it arrives).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "CONTROL",
    "TREATMENT",
    "Activity",
    "AttributionState",
    "Credit",
    "Input",
    "Order",
    "OrderIn",
    "Result",
    "Touch",
    "advance",
    "credit",
    "evaluate",
    "fields_of",
    "merge",
    "next_due",
    "prune",
    "tally_fields",
]

TREATMENT = "treatment"
CONTROL = "control"


@dataclass(frozen=True, slots=True)
class Touch:
    """A trial: one touch (or held-back touch) of a campaign."""

    trigger_id: str
    campaign: str
    rule: str
    group: str  # TREATMENT or CONTROL
    time: int  # deliver_after, epoch ms
    window_ms: int
    channel_cents: int = 0  # what sending the message cost (treatment only)
    offer_cents: int = 0  # what the offer costs when used (treatment only)
    origin: str = ""

    @property
    def end(self) -> int:
        return self.time + self.window_ms


@dataclass(frozen=True, slots=True)
class OrderIn:
    """An order event: `paid` adds the order, `refunded` retracts it."""

    order_id: str
    status: str  # "paid" or "refunded"
    time: int
    amount_cents: int = 0
    coupon: bool = False
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Activity:
    """A browse, cart or follow event (only its time matters)."""

    time: int
    origin: str = ""


Input = Touch | OrderIn | Activity


@dataclass(slots=True)
class Order:
    paid: int = 0  # time of the paid event (0: not seen)
    amount_cents: int = 0
    coupon: bool = False
    refunded: int = 0  # time of the refund event (0: none)

    @property
    def counts(self) -> bool:
        return bool(self.paid) and not self.refunded

    @property
    def last(self) -> int:
        return max(self.paid, self.refunded)


@dataclass(frozen=True, slots=True)
class Result:
    """What one trial adds to its campaign's figures."""

    final: bool = False
    converted: bool = False
    orders: int = 0
    revenue_cents: int = 0
    cost_cents: int = 0
    interacting: bool = False


@dataclass(frozen=True, slots=True)
class Credit:
    """An order attributed to a treatment touch (`retracted`: taken back after a refund)."""

    order_id: str
    trigger_id: str
    campaign: str
    amount_cents: int
    order_time: int
    touch_time: int
    window_ms: int
    retracted: bool = False


@dataclass(slots=True)
class AttributionState:
    touches: dict[str, Touch] = field(default_factory=dict)  # trigger id -> touch
    orders: dict[str, Order] = field(default_factory=dict)  # order id -> order
    activity: list[int] = field(default_factory=list)  # times, ascending, distinct
    results: dict[str, Result] = field(default_factory=dict)  # trigger id -> what the figures hold of it
    credited: dict[str, str] = field(default_factory=dict)  # order id -> trigger id of its record on Kafka
    retracted: set[str] = field(default_factory=set)  # order ids whose record was taken back
    as_of: int = 0  # the watermark the state was last brought to
    # "<group>|<campaign>" -> this customer's [trials, converted, final trials, final converted]
    # (kept after its trials are forgotten: the counters' sums of squares are built on it)
    tallies: dict[str, list[int]] = field(default_factory=dict)


ACTIVITY_LIMIT = 512  # activity times kept per customer (the newest)


def merge(state: AttributionState, items: Iterable[Input]) -> None:
    """Add inputs to the state; a repeat changes nothing, and so does the order they come in."""
    for item in items:
        if isinstance(item, Touch):
            state.touches.setdefault(item.trigger_id, item)
        elif isinstance(item, OrderIn):
            order = state.orders.setdefault(item.order_id, Order())
            if item.status == "refunded":
                order.refunded = min(order.refunded or item.time, item.time)
            elif item.status == "paid":
                # two paid events of one order: the earliest wins, whichever comes first
                if not order.paid or (item.time, item.amount_cents) < (order.paid, order.amount_cents):
                    order.paid, order.amount_cents = item.time, item.amount_cents
                order.coupon = order.coupon or item.coupon
        else:
            _add_time(state.activity, item.time)


def _add_time(times: list[int], t: int) -> None:
    if times and t > times[-1]:
        times.append(t)
    elif t not in times:
        times.append(t)
        times.sort()
    if len(times) > ACTIVITY_LIMIT:
        del times[: len(times) - ACTIVITY_LIMIT]


def _in_order(touches: Iterable[Touch]) -> list[Touch]:
    return sorted(touches, key=lambda t: (t.time, t.trigger_id))


def evaluate(state: AttributionState, watermark: int) -> dict[str, Result]:
    """The result of every trial of the state as of `watermark`."""
    paid = sorted((o.paid, oid) for oid, o in state.orders.items() if o.counts)
    counted: dict[str, set[str]] = {}  # campaign -> orders an earlier trial counted
    out = {}
    for touch in _in_order(state.touches.values()):
        start, end = touch.time, touch.end
        window = [(t, oid) for t, oid in paid if start < t <= end]
        taken = counted.setdefault(touch.campaign, set())
        mine = [oid for _, oid in window if oid not in taken]
        taken.update(mine)
        revenue = sum(state.orders[oid].amount_cents for oid in mine)
        cost = 0
        if touch.group == TREATMENT:
            coupon = any(state.orders[oid].coupon for _, oid in window)
            cost = touch.channel_cents + (touch.offer_cents if coupon else 0)
        until = window[0][0] if window else end + 1  # before converting, or within the window
        interacting = any(start < t < until for t in state.activity)
        out[touch.trigger_id] = Result(watermark >= end, bool(window), len(mine), revenue, cost, interacting)
    return out


def fields_of(group: str, result: Result) -> dict[str, int]:
    """The counters one trial adds to its campaign's figures: `<final|open>|<group>|<measure>`, and
    for treatment trials the same under `interacting` or `not_interacting`."""
    status = "final" if result.final else "open"
    out: dict[str, int] = {}
    buckets = [group]
    if group == TREATMENT:
        buckets.append("interacting" if result.interacting else "not_interacting")
    for bucket in buckets:
        prefix = f"{status}|{bucket}|"
        out[prefix + "trials"] = 1
        out[prefix + "converted"] = int(result.converted)
        out[prefix + "orders"] = result.orders
        out[prefix + "revenue"] = result.revenue_cents
        if bucket == group:
            out[prefix + "cost"] = result.cost_cents
    return out


Tally = tuple[int, int]  # one customer's trials and converted trials of a campaign and group
Counters = dict[str, dict[str, int]]  # campaign -> counter -> change


def tally_fields(status: str, group: str, old: Tally, new: Tally) -> dict[str, int]:
    """The change of the cluster counters `<status>|<group>|<measure>` (`status`: `all` or
    `final`) when one customer's (trials, converted) of a campaign go from `old` to `new`:
    `customers` (those with a trial), `trials_sq`, `converted_sq` and `cross` (trials ×
    converted), each summed over the customers."""
    (n0, y0), (n1, y1) = old, new
    prefix = f"{status}|{group}|"
    return {
        prefix + "customers": int(n1 > 0) - int(n0 > 0),
        prefix + "trials_sq": n1 * n1 - n0 * n0,
        prefix + "converted_sq": y1 * y1 - y0 * y0,
        prefix + "cross": n1 * y1 - n0 * y0,
    }


def _tally(state: AttributionState, touch: Touch, old: Result | None, new: Result, changes: Counters) -> None:
    """Move the customer's tally of `touch`'s campaign and group by one trial's change of result,
    and the campaign's cluster counters with it."""
    key = f"{touch.group}|{touch.campaign}"
    n, y, nf, yf = before = state.tallies.get(key, [0, 0, 0, 0])
    was = old or Result()
    n += old is None
    y += int(new.converted) - int(was.converted)
    nf += int(new.final) - int(was.final)
    yf += int(new.final and new.converted) - int(was.final and was.converted)
    state.tallies[key] = [n, y, nf, yf]
    change = changes.setdefault(touch.campaign, {})
    for status, old_t, new_t in (("all", before[:2], (n, y)), ("final", before[2:], (nf, yf))):
        for name, value in tally_fields(status, touch.group, (old_t[0], old_t[1]), new_t).items():
            change[name] = change.get(name, 0) + value


def credit(state: AttributionState, watermark: int, first_touch: bool = False) -> list[Credit]:
    """Attribution records due now: each paid order the watermark has passed that lies in a
    treatment window gets one, crediting the last touch before it (the first with `first_touch`);
    one whose refund the watermark has passed too gets a retraction. Both go by event time, not
    by when the refund arrived: a refund read before the watermark reached the payment still
    gives the record and its retraction. Marks them in the state."""
    out = []
    treated = _in_order(t for t in state.touches.values() if t.group == TREATMENT)
    for oid, order in sorted(state.orders.items()):
        if not order.paid or order.paid > watermark:
            continue
        done = state.credited.get(oid)
        if done is None:
            inside = [t for t in treated if t.time < order.paid <= t.end]
            if not inside:
                continue
            touch = inside[0] if first_touch else inside[-1]
            state.credited[oid] = done = touch.trigger_id
            out.append(_credit(oid, order, touch, retracted=False))
        if order.refunded and order.refunded <= watermark and oid not in state.retracted:
            state.retracted.add(oid)
            taken = state.touches.get(done)
            if taken is not None:
                out.append(_credit(oid, order, taken, retracted=True))
    return out


def _credit(oid: str, order: Order, touch: Touch, *, retracted: bool) -> Credit:
    return Credit(oid, touch.trigger_id, touch.campaign, order.amount_cents, order.paid, touch.time,
                  touch.window_ms, retracted)  # fmt: skip


def next_due(state: AttributionState, watermark: int, keep_ms: int) -> int | None:
    """When the customer needs the engine again: a window ends (its trial becomes final), a paid
    order is to be credited or a credited one's refund retracted, or something becomes old enough
    to be forgotten."""
    due = [t.end for t in state.touches.values() if t.end > watermark]
    for oid, o in state.orders.items():
        if o.paid > watermark and oid not in state.credited:
            due.append(o.paid)
        elif o.refunded > watermark and oid not in state.retracted:
            due.append(o.refunded)
    forget = [t.end + keep_ms for t in state.touches.values()]
    forget += [o.last + keep_ms for o in state.orders.values()]
    due += [t for t in forget if t > watermark]
    return min(due, default=None)


def prune(state: AttributionState, watermark: int, keep_ms: int) -> None:
    """Forget what can no longer change: a trial whose window ended `keep_ms` before the watermark
    (its figures stay in the campaign's; a refund after that no longer retracts it), once no later
    trial of its campaign still overlaps it; orders and activity older than every trial kept and
    than `keep_ms` behind the watermark."""
    horizon = watermark - keep_ms
    kept: list[Touch] = []
    by_campaign: dict[str, list[Touch]] = {}
    for touch in _in_order(state.touches.values()):
        by_campaign.setdefault(touch.campaign, []).append(touch)
    for touches in by_campaign.values():
        # a trial goes only with every earlier one of its campaign, and only when none that stays
        # starts inside its window (else that one would count an order it counted)
        cut = 0
        for i, touch in enumerate(touches):
            if touch.end >= horizon:
                break
            if i + 1 == len(touches) or touches[i + 1].time >= touch.end:
                cut = i + 1
        kept += touches[cut:]
    staying = {touch.trigger_id for touch in kept}
    for tid in [tid for tid in state.touches if tid not in staying]:
        del state.touches[tid]
        state.results.pop(tid, None)
    oldest = min((t.time for t in kept), default=watermark)
    floor = min(oldest, horizon)
    for oid, order in list(state.orders.items()):
        if order.last < floor:
            del state.orders[oid]
            state.credited.pop(oid, None)
            state.retracted.discard(oid)
    state.activity = [t for t in state.activity if t >= floor]


def advance(
    state: AttributionState, items: Iterable[Input], watermark: int, keep_ms: int, *, first_touch: bool = False
) -> tuple[Counters, list[Credit]]:
    """Take `items` into the state as of `watermark`: the changes of the campaigns' counters (each
    trial's new result less what the counters held of it), the attribution records now due, and
    what can no longer change forgotten (its figures stay in the counters). A touch whose window
    ended `keep_ms` before the customer's previous watermark (a repeat of one already forgotten,
    or input that late) is not taken."""
    horizon = state.as_of - keep_ms
    merge(state, (i for i in items if not isinstance(i, Touch) or i.end >= horizon))
    state.as_of = watermark = max(state.as_of, watermark)  # a shard's clock never goes back for a customer
    changes: Counters = {}
    for tid, result in evaluate(state, watermark).items():
        old = state.results.get(tid)
        if old == result:
            continue
        touch = state.touches[tid]
        change = changes.setdefault(touch.campaign, {})
        for key, value in fields_of(touch.group, result).items():
            change[key] = change.get(key, 0) + value
        if old is not None:
            for key, value in fields_of(touch.group, old).items():
                change[key] = change.get(key, 0) - value
        _tally(state, touch, old, result, changes)
        state.results[tid] = result
    credits = credit(state, watermark, first_touch)
    prune(state, watermark, keep_ms)
    return {c: {k: v for k, v in change.items() if v} for c, change in changes.items()}, credits
