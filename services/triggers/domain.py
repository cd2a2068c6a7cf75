"""Trigger decisions as pure functions: (customer state, input or clock, config) -> decisions.

Inputs are stage transitions and the events that start or cancel per-entity timers (orders,
cart adds, profiles). A rule whose cause is a transition decides at once (or after its delay);
the others register a timer that fires when the event-time watermark reaches it. Every
decision passes the guardrails in this order, the first that holds suppressing it with its
reason: consent for the channel ("consent"), quiet hours in the customer's zone ("quiet_hours"
when the rule drops, otherwise delivery is deferred to the end of the quiet hours), the
campaign's fatigue (when the rule has one: the customer's last N touches of the campaign all went
without a paid order, "fatigue"), the channel's frequency caps at the delivery time
("frequency_cap"), the global control group
("holdout:global") and the campaign's control group ("holdout"). Every guardrail but the control
groups comes first, and a held-out decision takes the cap slot its send would have taken, so the
control group is thinned exactly as the treated group is; its records carry the delivery time a
send would have had (quiet hours applied): attribution starts both groups' windows at that time.
A decision is made at most once per (rule, customer, cause).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from functools import lru_cache
from operator import attrgetter
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.triggers.config import FATIGUE_LIMIT, Guardrails, OfferConfig, TriggerConfig, TriggerRule
from services.triggers.state import (
    CLOSED_LIMIT,
    DECIDED_LIMIT,
    PAID_LIMIT,
    SEEN_DAYS,
    SEEN_LIMIT,
    Timer,
    TriggerState,
)

DAY_MS = 86_400_000

__all__ = [
    "CAMPAIGN_RULE",
    "CampaignIn",
    "CartIn",
    "Decision",
    "OrderIn",
    "ProfileIn",
    "TransitionIn",
    "apply",
    "apply_in_order",
    "campaign_rule",
    "decide",
    "order_key",
    "take",
    "fingerprint",
    "is_repeat",
    "fire",
    "holdout_unit",
    "next_birthday",
    "quiet_until",
    "trigger_id",
    "utc_ms",
]


@dataclass(frozen=True, slots=True)
class TransitionIn:
    transition_id: str
    model: str
    from_stage: str | None
    to_stage: str | None
    time: int
    seq: int = 0  # the stager's count of the customer's transitions: orders those of one instant
    origin: str = ""  # where it was read: "<topic>|<partition>|<offset>" (for its dead letter)
    accepted: int = 0  # when the event behind it was accepted at ingest (ms), 0: unknown or a timer


@dataclass(frozen=True, slots=True)
class OrderIn:
    event_id: str
    order_id: str
    status: str  # created, paid, cancelled, refunded
    time: int
    origin: str = ""
    accepted: int = 0  # when ingest handed it to Kafka (ms; its record's timestamp), 0: unknown


@dataclass(frozen=True, slots=True)
class CartIn:
    event_id: str
    action: str  # add, remove
    time: int
    origin: str = ""
    accepted: int = 0  # when ingest handed it to Kafka (ms; its record's timestamp), 0: unknown


@dataclass(frozen=True, slots=True)
class ProfileIn:
    event_id: str
    time: int
    consent: dict[str, bool]
    timezone: str | None = None
    birthday: str | None = None  # "YYYY-MM-DD"
    origin: str = ""


@dataclass(frozen=True, slots=True)
class CampaignIn:
    """One audience member of one run of a scheduled campaign: decided at the run's time by the
    rule built from the campaign (`campaign_rule`)."""

    event_id: str  # the request's id
    campaign_id: str
    time: int  # the run's time
    action: str
    channel: str
    topic: str
    offer: tuple[str, float, float] | None  # kind, value, cost
    quiet_hours: str
    origin: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.offer, list):  # as kept in a state's JSON
            object.__setattr__(self, "offer", tuple(self.offer))

    @property
    def rule(self) -> TriggerRule:
        return campaign_rule(self.campaign_id, self.action, self.channel, self.topic, self.offer, self.quiet_hours)


Input = TransitionIn | OrderIn | CartIn | ProfileIn | CampaignIn
CAMPAIGN_RULE = "member_day"  # the rule name of every scheduled campaign's decisions


@dataclass(frozen=True, slots=True)
class Decision:
    trigger_id: str
    rule: TriggerRule
    cause: str
    decided_at: int
    deliver_after: int
    suppressed: str | None

    @property
    def offer(self) -> OfferConfig | None:
        return self.rule.offer


@lru_cache(maxsize=256)
def campaign_rule(
    campaign_id: str, action: str, channel: str, topic: str, offer: tuple[str, float, float] | None, quiet_hours: str
) -> TriggerRule:
    """The rule a scheduled campaign's decisions go by: capped, held out and quiet like a rule's.
    ValueError (pydantic's) for values no rule can have."""
    given = None if offer is None else OfferConfig(kind=offer[0], value=offer[1], cost=offer[2])
    return TriggerRule(name=CAMPAIGN_RULE, on="campaign", action=action, campaign=campaign_id, channel=channel,
                       topic=topic, offer=given, quiet_hours=quiet_hours)  # fmt: skip


def trigger_id(rule: str, tenant: str, customer: str, cause: str) -> str:
    """Deterministic: the same rule, customer and cause always give the same id."""
    return hashlib.blake2b(f"{rule}|{tenant}|{customer}|{cause}".encode(), digest_size=16).hexdigest()


def holdout_unit(tenant: str, customer: str, salt: str) -> float:
    """A number in [0, 1) fixed by (tenant, customer, salt): below the share = held out."""
    digest = hashlib.blake2b(f"{tenant}|{customer}|{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _zone(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "Asia" names a folder, not a zone
        return ZoneInfo(default)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def quiet_until(at: int, zone: ZoneInfo, start: clock_time, end: clock_time) -> int | None:
    """None if `at` (epoch ms) is outside the quiet hours [start, end) in `zone`; otherwise the
    epoch ms when they end. A window with start after end runs across midnight."""
    if start == end:
        return None
    local = datetime.fromtimestamp(at / 1000, zone)
    now = local.time()
    quiet = (now >= start or now < end) if start > end else (start <= now < end)
    if not quiet:
        return None
    day = local.date() if now < end else local.date() + timedelta(days=1)
    return _ms(datetime.combine(day, end, tzinfo=zone))


def next_birthday(month_day: str, after: int, zone: ZoneInfo) -> tuple[int, int]:
    """(epoch ms of the first local midnight of the birthday at or after `after`, its year).
    29 February is celebrated on 28 February in other years."""
    month, day = (int(x) for x in month_day.split("-"))
    year = datetime.fromtimestamp(after / 1000, zone).year
    for y in (year, year + 1, year + 2):
        d = day if (month, day) != (2, 29) or _leap(y) else 28
        moment = _ms(datetime(y, month, d, tzinfo=zone))
        if moment >= after:
            return moment, y
    raise AssertionError("a birthday falls within two years")


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _month_day(birthday: str) -> str | None:
    try:
        return date.fromisoformat(birthday).strftime("%m-%d")
    except ValueError:
        return None


def fingerprint(event_id: str) -> int:
    """What the state remembers of an applied event, to recognise it when it comes again."""
    return zlib.crc32(event_id.encode())


def _ident(item: Input) -> str:
    return item.transition_id if isinstance(item, TransitionIn) else item.event_id


def is_repeat(state: TriggerState, item: Input) -> bool:
    """Whether `item` was applied before (remembered for SEEN_DAYS of event time)."""
    fp = fingerprint(_ident(item))
    return any(entry & 0xFFFFFFFF == fp for entry in state.seen)


def _remember(state: TriggerState, item: Input) -> None:
    """Remember `item` as (day << 32 | fingerprint), newest first; forget what is older than
    SEEN_DAYS of event time behind the customer (such an input is refused as too late)."""
    horizon = (max(state.clock, item.time) - SEEN_DAYS * DAY_MS) // DAY_MS
    entry, seen = (item.time // DAY_MS) << 32 | fingerprint(_ident(item)), state.seen
    if not seen or (entry >= seen[0] and seen[-1] >> 32 > horizon):  # the usual case: newest, none expired
        seen.insert(0, entry)
        del seen[SEEN_LIMIT:]
        return
    kept = [known for known in seen if known >> 32 > horizon]
    state.seen = sorted([*kept, entry], reverse=True)[:SEEN_LIMIT]


# --- inputs ----------------------------------------------------------------------------------
def apply(state: TriggerState, item: Input, config: TriggerConfig, tenant: str, customer: str) -> list[Decision]:
    """Apply one input to `state` (in place); the decisions it makes at once. A repeat of an
    input applied before changes nothing."""
    if is_repeat(state, item):
        return []
    _remember(state, item)
    if isinstance(item, TransitionIn):
        return _on_transition(state, item, config, tenant, customer)
    if isinstance(item, CampaignIn):
        found = decide(
            state, item.rule, f"campaign:{item.campaign_id}:{item.time}", item.time, config, tenant, customer
        )
        return [found] if found else []
    if isinstance(item, OrderIn):
        _on_order(state, item, config)
    elif isinstance(item, CartIn):
        _on_cart(state, item, config)
    else:
        _on_profile(state, item, config)
    return []


def _on_transition(
    state: TriggerState, tr: TransitionIn, config: TriggerConfig, tenant: str, customer: str
) -> list[Decision]:
    out: list[Decision] = []
    for rule in config.active("transition"):
        if rule.model != tr.model or rule.to != tr.to_stage:
            continue
        if rule.from_stages is not None and tr.from_stage not in rule.from_stages:
            continue
        cause = f"transition:{tr.transition_id}"
        if rule.delay_seconds > 0:
            _set(state, Timer(rule.name, f"t:{tr.transition_id}", tr.time + _delay(rule), cause, tr.time))
            continue
        decision = decide(state, rule, cause, tr.time, config, tenant, customer)
        if decision:
            out.append(decision)
    return out


def _on_order(state: TriggerState, order: OrderIn, config: TriggerConfig) -> None:
    if order.status == "created":
        if order.order_id not in state.closed:
            for rule in config.active("order_unpaid"):
                due = order.time + _delay(rule)
                _set(state, Timer(rule.name, order.order_id, due, f"order:{order.order_id}", order.time))
        _order_placed(state, order.time)
        return
    if order.status in ("paid", "cancelled", "refunded"):
        state.closed[order.order_id] = order.time
        if len(state.closed) > CLOSED_LIMIT:
            oldest = min(state.closed, key=lambda k: state.closed[k])
            del state.closed[oldest]
        for rule in config.active("order_unpaid"):
            state.timers.pop(f"{rule.name}|{order.order_id}", None)
    if order.status == "paid":
        _order_placed(state, order.time)
        if order.order_id in state.paid_orders:  # a second paid event of one order is not another order
            return
        state.paid_orders.insert(0, order.order_id)
        del state.paid_orders[PAID_LIMIT:]
        _on_paid(state, order, config)


def _order_placed(state: TriggerState, time: int) -> None:
    """An order placed after a cart add cancels its abandoned-cart reminder."""
    state.last_order = max(state.last_order, time)
    for timer in [t for t in state.timers.values() if t.entity == "cart" and t.at <= time]:
        del state.timers[timer.key]


def _on_paid(state: TriggerState, order: OrderIn, config: TriggerConfig) -> None:
    _responded(state, order.time)
    state.paid_count += 1
    state.first_paid = min(state.first_paid, order.time) if state.first_paid else order.time
    newest = order.time >= state.last_paid
    state.last_paid = max(state.last_paid, order.time)
    if state.paid_count < 2 or not newest:
        return
    # the customer's usual interval between paid orders, and at least the rule's delay
    usual = (state.last_paid - state.first_paid) // (state.paid_count - 1)
    for rule in config.active("repurchase"):
        interval = max(usual, _delay(rule))
        _set(state, Timer(rule.name, "repurchase", order.time + interval, f"repurchase:{order.event_id}", order.time))


def _on_cart(state: TriggerState, cart: CartIn, config: TriggerConfig) -> None:
    if cart.action != "add" or cart.time <= state.last_order:
        return
    for rule in config.active("cart_abandoned"):
        current = state.timers.get(f"{rule.name}|cart")
        if current is None or current.at <= cart.time:
            _set(state, Timer(rule.name, "cart", cart.time + _delay(rule), f"cart:{cart.event_id}", cart.time))


def _on_profile(state: TriggerState, profile: ProfileIn, config: TriggerConfig) -> None:
    state.consent.update(profile.consent)
    if profile.timezone:
        state.timezone = profile.timezone
    if profile.birthday and (month_day := _month_day(profile.birthday)):
        state.birthday = month_day
    if state.birthday:
        zone = _zone(state.timezone, config.guardrails.default_timezone)
        for rule in config.active("birthday"):
            due, year = next_birthday(state.birthday, profile.time, zone)
            _set(state, Timer(rule.name, "birthday", due, f"birthday:{year}", profile.time))


def _set(state: TriggerState, timer: Timer) -> None:
    state.timers[timer.key] = timer


def _delay(rule: TriggerRule) -> int:
    return int(rule.delay_seconds * 1000)


def order_key(item: Input) -> tuple[int, int, int, str]:
    """The order inputs of one instant are applied in: events (by id) before transitions, and
    transitions in the order the stager made them, so neither arrival order nor topic shows in
    the decisions."""
    if isinstance(item, TransitionIn):
        return item.time, 1, item.seq, item.transition_id
    if isinstance(item, CampaignIn):  # after the instant's transitions: the audience stood so then
        return item.time, 2, 0, item.event_id
    return item.time, 0, 0, item.event_id


def take(
    state: TriggerState, items: list[Input], watermark: int, config: TriggerConfig, tenant: str, customer: str
) -> tuple[list[tuple[Input | None, Decision]], int, list[tuple[Input, str]]]:
    """Take new `items` in and apply, in event-time order with the timers, every pending input and
    timer due at or before `watermark`; returns the decisions (with the input that made each,
    None for a timer), the number of late inputs and (input, reason) of the inputs the rules
    could not apply (the state is as if they never came).

    An input later than the customer's clock waits in `pending` until the watermark reaches it,
    so the order inputs are read in (topics read at different paces, batch boundaries) does not
    change the decisions. One older than the clock is late beyond the allowed lateness: it is
    applied at once."""
    out: list[tuple[Input | None, Decision]] = []
    rejected: list[tuple[Input, str]] = []
    late = 0
    known = {order_key(i) for i in state.pending}
    for item in items:
        if item.time <= state.clock - SEEN_DAYS * DAY_MS:
            # older than what the state remembers: it could not be told from a repeat
            rejected.append((item, f"too_late: {(state.clock - item.time) // DAY_MS} days behind the customer"))
        elif item.time < state.clock:
            late += 1
            out += _apply_safely(state, item, config, tenant, customer, rejected)
        elif order_key(item) not in known:
            known.add(order_key(item))
            state.pending.append(item)
    state.pending.sort(key=order_key)
    ready = [i for i in state.pending if i.time <= watermark]
    if ready:
        state.pending = state.pending[len(ready) :]
    out += apply_in_order(state, ready, watermark, config, tenant, customer, rejected)
    state.clock = max(state.clock, watermark)
    return out, late, rejected


def _apply_safely(
    state: TriggerState,
    item: Input,
    config: TriggerConfig,
    tenant: str,
    customer: str,
    rejected: list[tuple[Input, str]],
) -> list[tuple[Input | None, Decision]]:
    saved = _snapshot(state)
    try:
        return [(item, d) for d in apply(state, item, config, tenant, customer)]
    except Exception as exc:  # noqa: BLE001 - one input the rules cannot take must not stop its customer
        _restore(state, saved)
        rejected.append((item, f"unprocessable: {type(exc).__name__}: {exc}"))
        return []


_SLOTS: tuple[str, ...] = TriggerState.__slots__
_VALUES = attrgetter(*_SLOTS)
# what `apply` changes in place, copied; everything else it rebinds
_COPIED = ("consent", "timers", "sends", "closed", "pending", "seen", "paid_orders", "touches")


def _snapshot(state: TriggerState) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The state's values, with copies of the containers `apply` changes in place."""
    copies = (state.consent.copy(), state.timers.copy(), state.sends.copy(), state.closed.copy(),
              state.pending.copy(), state.seen.copy(), state.paid_orders.copy(),
              state.touches.copy())  # fmt: skip
    return _VALUES(state), copies


def _restore(state: TriggerState, saved: tuple[tuple[object, ...], tuple[object, ...]]) -> None:
    values, copies = saved
    for name, value in zip(_SLOTS, values, strict=True):
        setattr(state, name, value)
    for name, value in zip(_COPIED, copies, strict=True):
        setattr(state, name, value)


def apply_in_order(
    state: TriggerState,
    items: list[Input],
    watermark: int,
    config: TriggerConfig,
    tenant: str,
    customer: str,
    rejected: list[tuple[Input, str]] | None = None,
) -> list[tuple[Input | None, Decision]]:
    """Apply `items` and fire due timers in one event-time order: before each input, every timer
    due at or before its time (and at or before `watermark`) fires; after the last, every timer
    due at or before `watermark`. So a batch holding orders on days 0, 10 and 40 gives the day-20
    reminder that three separate batches give. Each decision comes with the input that made it
    (None: a timer); an input the rules cannot apply is left out and added to `rejected`."""
    out: list[tuple[Input | None, Decision]] = []
    for item in sorted(items, key=order_key):
        out += [(None, d) for d in fire(state, min(item.time, watermark), config, tenant, customer)]
        out += _apply_safely(state, item, config, tenant, customer, [] if rejected is None else rejected)
    out += [(None, d) for d in fire(state, watermark, config, tenant, customer)]
    return out


# --- timers ----------------------------------------------------------------------------------
def fire(state: TriggerState, watermark: int, config: TriggerConfig, tenant: str, customer: str) -> list[Decision]:
    """Fire every timer due at or before `watermark`, in due order; the decisions they make."""
    out: list[Decision] = []
    if not state.timers:
        return out
    while True:
        due = sorted((t for t in state.timers.values() if t.due <= watermark), key=lambda t: (t.due, t.key))
        if not due:
            return out
        for timer in due:
            del state.timers[timer.key]
            rule = config.rule(timer.rule)
            if rule is None or not rule.enabled:
                continue
            decision = decide(state, rule, timer.cause, timer.due, config, tenant, customer)
            if decision:
                out.append(decision)
            if rule.on == "birthday" and state.birthday:
                zone = _zone(state.timezone, config.guardrails.default_timezone)
                nxt, year = next_birthday(state.birthday, timer.due + 1, zone)
                _set(state, Timer(rule.name, "birthday", nxt, f"birthday:{year}", timer.due))


# --- guardrails ------------------------------------------------------------------------------
def decide(
    state: TriggerState, rule: TriggerRule, cause: str, at: int, config: TriggerConfig, tenant: str, customer: str
) -> Decision | None:
    """The decision of `rule` for `cause` at event time `at`, through the guardrails; None if
    this cause was decided before."""
    tid = trigger_id(rule.name, tenant, customer, cause)
    short = tid[:16]
    if short in state.decided:
        return None
    state.decided = [short, *state.decided][:DECIDED_LIMIT]
    g = config.guardrails
    reason, deliver = _guard(state, rule, at, g, tenant, customer)
    touch = reason in (None, "holdout", "holdout:global")  # what attribution takes as a trial
    # a held-out decision takes the cap slot its send would have taken, so that the caps thin
    # both groups alike (else treated trials near other sends drop out and bias the comparison)
    if touch and rule.capped:
        sends = [t for t in state.sends.get(rule.channel, []) if abs(t - deliver) < _longest(g)]
        state.sends[rule.channel] = sorted([*sends, deliver])
    if touch and rule.fatigue:
        window = rule.fatigue_window_days * DAY_MS
        mine = [[deliver, deliver + window, 0], *state.touches.get(rule.campaign, [])]
        state.touches[rule.campaign] = mine[:FATIGUE_LIMIT]
    return Decision(tid, rule, cause, at, deliver, reason)


def _guard(
    state: TriggerState, rule: TriggerRule, at: int, g: Guardrails, tenant: str, customer: str
) -> tuple[str | None, int]:
    if not state.consent.get(rule.channel, g.consent_default):
        return "consent", at
    deliver = at
    if rule.quiet_hours != "ignore":
        zone = _zone(state.timezone, g.default_timezone)
        until = quiet_until(at, zone, g.quiet_start, g.quiet_end)
        if until is not None:
            if rule.quiet_hours == "drop":
                return "quiet_hours", at
            deliver = until
    if rule.fatigue and _fatigued(state.touches.get(rule.campaign, []), rule.fatigue, at):
        return "fatigue", deliver
    if rule.capped and _capped(state.sends.get(rule.channel, []), deliver, g):
        return "frequency_cap", deliver
    # a held-out customer's record carries the time the message would have gone out, so that
    # attribution measures both groups from the same moment
    if holdout_unit(tenant, customer, "global") < g.global_holdout_share:
        return "holdout:global", deliver
    if holdout_unit(tenant, customer, f"campaign:{rule.campaign}") < g.holdout_share:
        return "holdout", deliver
    return None, deliver


def _capped(sent: list[int], deliver: int, g: Guardrails) -> bool:
    """A cap of the channel is full at `deliver`, counting the deliveries `sent`."""
    for cap in g.caps:
        window = int(cap.window_seconds * 1000)
        if sum(1 for t in sent if abs(t - deliver) < window) >= cap.max:
            return True
    return False


def _fatigued(touches: list[list[int]], n: int, at: int) -> bool:
    """The last `n` touches whose window ended by `at` (every order in them is applied by then,
    inputs going in event-time order) all went without a paid order."""
    ended = [t for t in touches if t[1] <= at][:n]
    return len(ended) == n and not any(responded for _, _, responded in ended)


def _responded(state: TriggerState, paid_at: int) -> None:
    """A paid order answers every remembered touch whose window holds it."""
    for touches in state.touches.values():
        for t in touches:
            if t[0] < paid_at <= t[1]:
                t[2] = 1


def _longest(g: Guardrails) -> int:
    return int(max((c.window_seconds for c in g.caps), default=0) * 1000)


def utc_ms(moment: datetime) -> int:
    """Epoch ms of an aware datetime (helper for callers and tests)."""
    return _ms(moment.astimezone(UTC))
