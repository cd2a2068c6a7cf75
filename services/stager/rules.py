"""The stage rules as pure functions: (state, fact or timer, clock) -> (new state, transitions).

The state holds sufficient statistics that do not depend on arrival order (counts over distinct
facts, maxima, minima, the most recent events by time, the paid orders of the longest window), so
any arrival order and any duplication of facts gives the same state; every stage is a function of
that state and an instant. Time-driven changes come from `next_due`, the earliest instant at
which some stage may change with no new fact; `advance` applies them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from operator import attrgetter

from services.common.constants import MODEL_STAGES
from services.stager.config import StageRules

__all__ = [
    "MODELS",
    "CustomerState",
    "Fact",
    "Kind",
    "Transition",
    "Outcome",
    "advance",
    "apply_fact",
    "next_due",
    "next_wake",
    "replay",
    "take",
    "stage_names",
    "stages_at",
]

MODELS: tuple[str, ...] = tuple(MODEL_STAGES)
RECENT = 8  # most recent behaviour events kept: interaction (5 in 30 days) and late session merges
CREDITS = 64  # referral credits remembered against repeats


class Kind(IntEnum):
    BROWSE = 1
    CART_ADD = 2
    CART_REMOVE = 3
    JOIN = 4  # follow of the brand, a store or an official account: membership starts
    FAVOURITE = 5  # follow of a product
    UNFOLLOW = 6
    ORDER_CREATED = 7
    ORDER_PAID = 8
    ORDER_CANCELLED = 9
    ORDER_REFUNDED = 10
    REFERRAL_CREDIT = 11  # a customer this one referred paid a first order


INTEREST = frozenset({Kind.CART_ADD, Kind.JOIN, Kind.FAVOURITE})
PRODUCT_INTEREST = frozenset({Kind.CART_ADD, Kind.FAVOURITE})  # SICAS Interest: no brand follow
# shopping path step of each kind (0: activity that is no step)
STEP = {Kind.BROWSE: 1, Kind.CART_ADD: 2, Kind.FAVOURITE: 2, Kind.ORDER_CREATED: 3, Kind.ORDER_PAID: 4}
PATH_STAGES = {1: "browsing", 2: "selecting", 3: "ordered_unpaid", 4: "paid"}
PAID, REFUNDED = 1, 2
STAGE_NAMES = MODEL_STAGES  # the contract: what crm.stage.transitions carries


def stage_names(model: str) -> tuple[str, ...]:
    """Every stage of `model`, lowest first."""
    return STAGE_NAMES[model]


@dataclass(frozen=True, slots=True)
class Fact:
    """One event reduced to what the rules read."""

    event_id: str
    kind: Kind
    time: int  # event time, epoch ms
    order_key: int = 0  # stable hash of the order id
    amount_cents: int = 0
    referrer: str | None = None
    origin: str = ""  # where it was read: "<topic>|<partition>|<offset>" (for its dead letter)
    accepted: int = 0  # when ingest handed it to Kafka (ms; its record's timestamp), 0: unknown


@dataclass(frozen=True, slots=True)
class Transition:
    model: str
    from_stage: str | None
    to_stage: str | None
    at: int
    cause: str  # event id, or "timer:<ms>"
    accepted: int = 0  # when the event that caused it was accepted (ms), 0: unknown or a timer


@dataclass(slots=True)
class CustomerState:
    events: int = 0  # behaviour events, all time
    interest: int = 0  # follows, favourites and cart adds, all time
    paid: int = 0  # distinct paid orders net of refunds, all time
    referrals: int = 0
    credited_referrer: bool = False
    member_since: int = 0  # 0: not a member
    last_event: int = 0
    last_paid: int = 0
    last_browse: int = 0
    last_interest: int = 0
    last_product_interest: int = 0  # favourite or cart add (last_interest also counts joins)
    last_join: int = 0  # follow of the brand, a store or an official account
    last_credit: int = 0  # referral credit
    clock: int = 0  # this customer's event-time clock: latest fact or timer applied
    seq: int = 0  # transitions emitted so far (orders a customer's transitions at the same instant)
    # (order_key, time, amount_cents, PAID|REFUNDED), newest first, within rules.order_memory_ms
    orders: list[tuple[int, int, int, int]] = field(default_factory=list)
    # (time, step, 16-bit fingerprint of the event id), newest first, at most RECENT: the
    # fingerprint tells a repeat of a kept event from another event of the same instant
    recent: list[tuple[int, int, int]] = field(default_factory=list)
    # the latest session: first and last event time, highest path step reached
    session_start: int = 0
    session_end: int = 0
    session_best: int = 0
    stages: dict[str, str | None] = field(default_factory=dict)
    credits: list[int] = field(default_factory=list)  # fingerprints of the referral credits counted
    # facts read but not yet applied, by (time, event id): the watermark has not reached them, so
    # an earlier fact may still come; applied in event-time order once it has
    pending: list[Fact] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What `take` did: transitions, (referrer, fact) credits to send, facts applied, late facts,
    and (fact, reason) of facts the rules could not apply (the state is as if they never came)."""

    transitions: list[Transition] = field(default_factory=list)
    credits: list[tuple[str, Fact]] = field(default_factory=list)
    applied: list[Fact] = field(default_factory=list)
    late: int = 0
    rejected: list[tuple[Fact, str]] = field(default_factory=list)


def _order(fact: Fact) -> tuple[int, str]:
    return fact.time, fact.event_id


def take(s: CustomerState, facts: Iterable[Fact], watermark: int, rules: StageRules) -> Outcome:
    """Take new distinct `facts` in and apply, in event-time order with the timers, every pending
    fact and timer due at or before `watermark`; the clock ends at `watermark`.

    A fact later than the customer's clock waits in `pending` until the watermark reaches it, so
    the order facts are read in (topics read at different paces, batch boundaries) does not
    change the transitions. A fact older than the clock is late beyond the allowed lateness: it
    is applied at once (its stages change at the clock; a repeat of an applied fact changes
    nothing). One older than the longest window the state keeps (`order_memory_ms`) is rejected
    as too late: it could no longer be told from a repeat."""
    out = Outcome()
    known = {f.event_id for f in s.pending}
    added = False
    for fact in facts:
        if fact.time <= s.clock - rules.order_memory_ms:
            # older than every window the state keeps: it could not be told from a repeat
            out.rejected.append((fact, f"too_late: {(s.clock - fact.time) // 86_400_000} days behind the customer"))
        elif fact.time < s.clock:
            out.late += 1
            _apply(s, fact, rules, out)
        elif fact.event_id not in known:
            known.add(fact.event_id)
            s.pending.append(fact)
            added = True
    if added:
        s.pending.sort(key=_order)
    while s.pending and s.pending[0].time <= watermark:
        _apply(s, s.pending.pop(0), rules, out)
    out.transitions += advance(s, watermark, rules)
    return out


def _apply(s: CustomerState, fact: Fact, rules: StageRules, out: Outcome) -> None:
    saved = _snapshot(s)
    try:
        transitions, referrer = apply_fact(s, fact, rules)
    except Exception as exc:  # noqa: BLE001 - one fact the rules cannot take must not stop its customer
        _restore(s, saved)
        out.rejected.append((fact, f"unprocessable: {type(exc).__name__}: {exc}"))
        return
    out.transitions += [replace(t, accepted=fact.accepted) for t in transitions] if fact.accepted else transitions
    out.applied.append(fact)
    if referrer:
        out.credits.append((referrer, fact))


_SLOTS: tuple[str, ...] = CustomerState.__slots__
_VALUES = attrgetter(*_SLOTS)
_Saved = tuple[tuple[object, ...], list[tuple[int, int, int, int]], list[tuple[int, int, int]], dict[str, str | None]]


def _snapshot(s: CustomerState) -> _Saved:
    """The state's values, with copies of what `apply_fact` changes in place."""
    return _VALUES(s), list(s.orders), list(s.recent), dict(s.stages)


def _restore(s: CustomerState, saved: _Saved) -> None:
    values, orders, recent, stages = saved
    for name, value in zip(_SLOTS, values, strict=True):
        setattr(s, name, value)
    s.orders, s.recent, s.stages = orders, recent, stages


def next_wake(s: CustomerState, rules: StageRules) -> int | None:
    """When the customer needs the engine again with no new fact: its next time-driven change or
    its earliest pending fact, whichever comes first."""
    due = next_due(s, rules)
    if s.pending and (due is None or s.pending[0].time < due):
        return s.pending[0].time
    return due


def _in_window(t: int, now: int, window: int) -> bool:
    """An instant t counts at `now` while now - t < window (it leaves at exactly t + window)."""
    return t != 0 and t <= now and now - t < window


def stages_at(s: CustomerState, now: int, rules: StageRules) -> dict[str, str | None]:
    """Stage of every model at instant `now` (None: not in the model)."""
    if s.events == 0 and s.paid == 0 and not s.orders and not s.last_credit:
        return dict.fromkeys(MODELS)
    return {
        "pyramid": _pyramid(s, rules),
        "aipl": _aipl(s, now, rules),
        "lifecycle": _lifecycle(s, now, rules),
        "path": _path(s, now, rules),
        "value_grid": _value_grid(s, now, rules),
        "sicas": _sicas(s, now, rules),
    }


def _pyramid(s: CustomerState, rules: StageRules) -> str | None:
    if s.paid >= rules.loyal_min_paid:
        return "advocate" if s.referrals >= rules.advocate_min_referrals else "loyal"
    if s.paid == 2:
        return "repeat"
    if s.paid == 1:
        return "first_purchase"
    if s.interest > 0:
        return "considering"
    return "aware" if s.events > 0 else None


def _aipl(s: CustomerState, now: int, rules: StageRules) -> str | None:
    window = rules.aipl_window_ms
    paid = sum(1 for _, t, _, status in s.orders if status == PAID and _in_window(t, now, window))
    if paid >= rules.aipl_loyal_min_paid:
        return "L"
    if paid >= 1:
        return "P"
    if _in_window(s.last_interest, now, window):
        return "I"
    if _in_window(s.last_browse, now, window):
        return "A"
    return None


def _sicas(s: CustomerState, now: int, rules: StageRules) -> str | None:
    window = rules.sicas_window_ms
    if _in_window(s.last_credit, now, window):
        return "share"
    # a refunded order counts nowhere, as in AIPL's Purchase
    if any(status == PAID and _in_window(t, now, window) for _, t, _, status in s.orders):
        return "action"
    if _in_window(s.last_join, now, window):
        return "connect"
    if _in_window(s.last_product_interest, now, window):
        return "interest"
    if _in_window(s.last_browse, now, window):
        return "sense"
    return None


def _lifecycle(s: CustomerState, now: int, rules: StageRules) -> str | None:
    if s.member_since == 0 or s.member_since > now:
        return "prospect" if s.events else None
    if s.last_event and now - s.last_event >= rules.lifecycle_churn_ms:
        return "churned"
    if s.paid >= 1 and s.last_paid and now - s.last_paid >= rules.lifecycle_decline_ms:
        return "declining"
    if s.paid >= rules.lifecycle_mature_min_paid:
        return "mature"
    if s.paid >= rules.lifecycle_developing_min_paid:
        return "developing"
    return "new"


def _path(s: CustomerState, now: int, rules: StageRules) -> str | None:
    if not s.session_end or s.session_end > now or now - s.session_end >= rules.session_gap_ms:
        return None  # the session ended 30 minutes after its last event
    return PATH_STAGES.get(s.session_best)


def _session(s: CustomerState, t: int, step: int, gap: int) -> None:
    """Fold one behaviour event into the latest session (called before `recent` takes it)."""
    if not s.session_end or t - s.session_end >= gap:  # the first event, or a new session
        s.session_start, s.session_end, s.session_best = t, t, step
        return
    if t < s.session_start:
        if s.session_start - t >= gap:
            return  # an event of an earlier, finished session
        # A late event reaching back before the session start: it may bridge to earlier events.
        s.session_start = t
        for rt, rstep, _ in s.recent:
            if rt < s.session_start:
                if s.session_start - rt >= gap:
                    break
                s.session_start = rt
                step = max(step, rstep)
    s.session_end = max(s.session_end, t)
    s.session_best = max(s.session_best, step)


def _value_grid(s: CustomerState, now: int, rules: StageRules) -> str | None:
    if s.events == 0:
        return None
    cents = sum(a for _, t, a, status in s.orders if status == PAID and _in_window(t, now, rules.value_window_ms))
    high_value = cents >= round(rules.value_high_amount * 100)
    k = rules.interaction_high_events
    high_interaction = len(s.recent) >= k and _in_window(s.recent[k - 1][0], now, rules.interaction_window_ms)
    return f"{'high' if high_value else 'low'}_value_{'high' if high_interaction else 'low'}_interaction"


def next_due(s: CustomerState, rules: StageRules) -> int | None:
    """Earliest instant after `s.clock` at which a stage may change without a new fact."""
    now = s.clock
    candidates = [
        s.last_browse + rules.aipl_window_ms if s.last_browse else 0,
        s.last_interest + rules.aipl_window_ms if s.last_interest else 0,
        s.last_event + rules.lifecycle_churn_ms if s.member_since and s.last_event else 0,
        s.last_paid + rules.lifecycle_decline_ms if s.member_since and s.last_paid and s.paid else 0,
        s.member_since,
    ]
    sicas = rules.sicas_window_ms
    candidates += (t + sicas for t in (s.last_browse, s.last_product_interest, s.last_join, s.last_credit) if t)
    if s.session_end:
        candidates.append(s.session_end + rules.session_gap_ms)
    if s.recent:
        k = rules.interaction_high_events
        if len(s.recent) >= k:
            candidates.append(s.recent[k - 1][0] + rules.interaction_window_ms)
    for _, t, _, status in s.orders:
        if status == PAID:
            candidates += (t + rules.aipl_window_ms, t + sicas, t + rules.value_window_ms)
    future = [c for c in candidates if c > now]
    return min(future) if future else None


def _diff(s: CustomerState, new: dict[str, str | None], at: int, cause: str) -> list[Transition]:
    out = []
    for model in MODELS:
        old = s.stages.get(model)
        if new[model] != old:
            out.append(Transition(model, old, new[model], at, cause))
            s.seq += 1
    s.stages = new
    return out


def _prune(s: CustomerState, rules: StageRules) -> None:
    keep = rules.order_memory_ms
    if s.orders and s.clock - s.orders[-1][1] >= keep:  # newest first: the last is the oldest
        s.orders = [o for o in s.orders if s.clock - o[1] < keep]


def advance(s: CustomerState, until: int, rules: StageRules) -> list[Transition]:
    """Fire every time-driven change due at or before `until`; the clock moves to `until`."""
    out: list[Transition] = []
    due = next_due(s, rules)
    while due is not None and due <= until:
        s.clock = due
        out += _diff(s, stages_at(s, due, rules), due, f"timer:{due}")
        due = next_due(s, rules)
    s.clock = max(s.clock, until)
    _prune(s, rules)
    return out


def apply_fact(s: CustomerState, fact: Fact, rules: StageRules) -> tuple[list[Transition], str | None]:
    """Apply one (new, distinct) fact; returns the transitions and, when this fact is the
    customer's first paid order naming a referrer, that referrer (to be credited)."""
    out = advance(s, fact.time, rules)
    credit = _update(s, fact, rules)
    s.clock = max(s.clock, fact.time)
    _prune(s, rules)
    out += _diff(s, stages_at(s, s.clock, rules), s.clock, fact.event_id)
    return out, credit


def _update(s: CustomerState, fact: Fact, rules: StageRules) -> str | None:
    kind, t = fact.kind, fact.time
    if kind == Kind.REFERRAL_CREDIT:
        _credit(s, fact)
        return None
    s.events += 1
    s.last_event = max(s.last_event, t)
    if kind in INTEREST:
        s.interest += 1
        s.last_interest = max(s.last_interest, t)
    if kind in PRODUCT_INTEREST:
        s.last_product_interest = max(s.last_product_interest, t)
    if kind == Kind.BROWSE:
        s.last_browse = max(s.last_browse, t)
    if kind == Kind.JOIN:
        s.member_since = min(s.member_since, t) if s.member_since else t
        s.last_join = max(s.last_join, t)
    step = STEP.get(kind, 0)
    _session(s, t, step, rules.session_gap_ms)
    fp = zlib.crc32(fact.event_id.encode()) & 0xFFFF
    recent = s.recent
    if not recent or t > recent[0][0]:  # the usual case: newer than every kept event
        recent.insert(0, (t, step, fp))
        del recent[RECENT:]
    elif not any(rt == t and rfp == fp for rt, _, rfp in recent):  # a repeat is counted once
        s.recent = sorted([*recent, (t, step, fp)], reverse=True)[:RECENT]
    if kind == Kind.ORDER_PAID:
        return _paid(s, fact, rules)
    if kind == Kind.ORDER_REFUNDED:
        _refund(s, fact)
    return None


def _credit(s: CustomerState, fact: Fact) -> None:
    fp = zlib.crc32(fact.event_id.encode())
    if fp not in s.credits:  # a credit sent twice counts once (beyond CREDITS kept, all count)
        s.credits = sorted([fp, *s.credits])[:CREDITS]
        s.referrals += 1
    s.last_credit = max(s.last_credit, fact.time)


def _paid(s: CustomerState, fact: Fact, rules: StageRules) -> str | None:
    t = fact.time
    s.member_since = min(s.member_since, t) if s.member_since else t
    s.last_paid = max(s.last_paid, t)
    for i, (key, known, cents, status) in enumerate(s.orders):
        if key == fact.order_key:
            # The same order paid twice counts once, at its earliest payment (so arrival order does
            # not matter); a refund that arrived first keeps the payment from counting at all.
            if status == REFUNDED and cents == 0 and known >= t or known > t:
                s.orders[i] = (key, t, fact.amount_cents, status)
                s.orders.sort(key=_newest_first)
            return None
    s.paid += 1
    if s.clock - t < rules.order_memory_ms:
        s.orders = sorted([*s.orders, (fact.order_key, t, fact.amount_cents, PAID)], key=_newest_first)
    if fact.referrer and not s.credited_referrer:
        s.credited_referrer = True
        return fact.referrer
    return None


def _newest_first(order: tuple[int, int, int, int]) -> tuple[int, int]:
    """Newest first; orders of the same instant by key, so arrival order never shows."""
    return -order[1], order[0]


def _refund(s: CustomerState, fact: Fact) -> None:
    for i, (key, t, cents, status) in enumerate(s.orders):
        if key == fact.order_key:
            if status == PAID:
                s.orders[i] = (key, t, cents, REFUNDED)
                s.paid -= 1
            return
    # refund before (or long after) its payment: a tombstone keeps the payment from counting
    s.orders = sorted([*s.orders, (fact.order_key, fact.time, 0, REFUNDED)], key=_newest_first)


def replay(facts: Iterable[Fact], until: int, rules: StageRules) -> CustomerState:
    """State of one customer after `facts` (deduplicated by event id) and the clock at `until`."""
    state, seen = CustomerState(), set()
    for fact in facts:
        if fact.event_id in seen:
            continue
        seen.add(fact.event_id)
        apply_fact(state, fact, rules)
    advance(state, until, rules)
    return state
