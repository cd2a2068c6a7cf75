"""An independent batch computation of the default trigger decisions (shared/DOMAIN.md "Actions",
the default rule table and guardrails) over purchase-only data such as CDNOW, to check the
streaming trigger engine against. Written directly from the documented rules; it shares no code
with services/.

On purchase-only data six rules can fire: first_purchase_gift (push), repurchase_reminder (push),
vip_rights (email), winback_churned (email), winback_declining (sms) and welcome (in_app). The
others need events the data lacks (follows, carts, created orders, referrals, birthdays). All six
are computed, because the frequency caps count every delivery on a channel.

Order of decisions of one customer: by event time; at one instant, the engine's own timers
(repurchase reminders) first, then the stager's time-driven transitions (declining, churned),
then the transitions of the orders at that instant in event-id order (the order the engines give
facts of one instant), each order's in the stager's model order (pyramid before lifecycle). The
only same-instant pair on one channel is winback_churned then vip_rights (email), for a third
order placed exactly 180 days after the last.
"""

import hashlib
from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

Order = tuple[str, str, int, float]  # (customer, event_id, time_ms, amount)
# trigger_id -> (rule, customer, cause, decided_at, deliver_after, suppressed reason or None)
Decisions = dict[str, tuple[str, str, str, int, int, str | None]]

DAY = 86_400_000
DECLINE, CHURN = 90 * DAY, 180 * DAY
# rule -> channel (config.py DEFAULT_RULES); the campaign is the name with "-" for "_"
CHANNELS = {
    "first_purchase_gift": "push",
    "repurchase_reminder": "push",
    "vip_rights": "email",
    "winback_declining": "sms",
    "winback_churned": "email",
    "welcome": "in_app",
}
DEFAULT_RULES = ("first_purchase_gift", "repurchase_reminder", "winback_declining")
# default Guardrails: caps (window ms, max deliveries) per channel, quiet hours, control groups
CAPS = ((DAY, 1), (7 * DAY, 3))
QUIET_START, QUIET_END = clock_time(21, 0), clock_time(9, 0)
ZONE = ZoneInfo("Asia/Shanghai")
HOLDOUT_SHARE, GLOBAL_HOLDOUT_SHARE = 0.10, 0.05
REPURCHASE_MIN = DAY  # repurchase_reminder's delay_seconds: the shortest interval
# phases at one instant: engine timers, stager timer transitions, order transitions
TIMER, STAGE_TIMER, ORDER = 0, 1, 2


def cdnow_orders(path: str | Path) -> list[Order]:
    """[(customer, event_id, time_ms, amount)] of a CDNOW file (master or sample), in file order:
    event id "cdnow:<line number>" counting the header, customer id without leading zeros, the
    day at 00:00 UTC."""
    out: list[Order] = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue
            if len(parts) == 5:  # the sample: orig_id sample_id date cds value
                parts = [parts[0], *parts[2:]]
            day = datetime.strptime(parts[1], "%Y%m%d").replace(tzinfo=UTC)
            out.append((parts[0].lstrip("0") or "0", f"cdnow:{n}", int(day.timestamp()) * 1000, float(parts[3])))
    return out


def transition_id(tenant: str, customer: str, model: str, cause: str) -> str:
    return hashlib.blake2b(f"{tenant}|{customer}|{model}|{cause}".encode(), digest_size=12).hexdigest()


def trigger_id(rule: str, tenant: str, customer: str, cause: str) -> str:
    return hashlib.blake2b(f"{rule}|{tenant}|{customer}|{cause}".encode(), digest_size=16).hexdigest()


def holdout_unit(tenant: str, customer: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{tenant}|{customer}|{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def quiet_deferral(at: int) -> int:
    """Delivery time of a "defer" rule decided at `at`: `at` itself outside the quiet hours
    [21:00, 09:00) of the default zone, else the end of those quiet hours."""
    local = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=at)).astimezone(ZONE)
    now = local.time()
    if QUIET_END <= now < QUIET_START:
        return at
    day = local.date() if now < QUIET_END else local.date() + timedelta(days=1)
    end = datetime.combine(day, QUIET_END, tzinfo=ZONE)
    return (end - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def candidates(
    tenant: str, customer: str, orders: list[tuple[str, int]], until: int
) -> list[tuple[int, int, int, str, str]]:
    """Every rule firing of one customer (before the guardrails) as (time, phase, seq, rule,
    cause), from its paid orders [(event_id, time)] sorted by time (ties by event id), with
    every timer due at or before `until` fired."""
    out: list[tuple[int, int, int, str, str]] = []
    times = [t for _, t in orders]

    def on_transition(rule: str, model: str, cause: str, at: int, phase: int, seq: int) -> None:
        out.append((at, phase, seq, rule, f"transition:{transition_id(tenant, customer, model, cause)}"))

    for k, (event_id, t) in enumerate(orders):
        seq = 2 * k
        nxt = times[k + 1] if k + 1 < len(times) else None
        if k == 0:  # pyramid -> first_purchase; lifecycle None -> new (membership starts)
            on_transition("first_purchase_gift", "pyramid", event_id, t, ORDER, seq)
            on_transition("welcome", "lifecycle", event_id, t, ORDER, seq + 1)
        if k == 2:  # pyramid repeat -> loyal (3 paid orders)
            on_transition("vip_rights", "pyramid", event_id, t, ORDER, seq)
        if k >= 1:
            # the newest paid order of a customer with 2+: a reminder at the usual interval,
            # replaced by a newer paid order placed strictly before it is due
            usual = (t - times[0]) // k
            due = t + max(usual, REPURCHASE_MIN)
            if due <= until and (nxt is None or nxt >= due):
                out.append((due, TIMER, seq, "repurchase_reminder", f"repurchase:{event_id}"))
        # lifecycle: declining 90 days after the last paid order, churned 180 days after the last
        # event (= the last paid order here); an order before the instant cancels the change
        for rule, gap in (("winback_declining", DECLINE), ("winback_churned", CHURN)):
            at = t + gap
            if at <= until and (nxt is None or nxt >= at):
                on_transition(rule, "lifecycle", f"timer:{at}", at, STAGE_TIMER, seq)
    return sorted(out)


def guard(
    tenant: str,
    customer: str,
    rule: str,
    at: int,
    sends: dict[str, list[int]],
    shares: tuple[float, float],
) -> tuple[str | None, int]:
    """(suppressed reason or None, deliver_after) of one decision through the guardrails in the
    documented order: consent (no consent data: opted in), quiet hours (every rule here defers),
    the channel's frequency caps at the delivery time, global control group, campaign control
    group. A delivery, or the delivery a held-out decision would have been, is recorded in
    `sends` (channel -> delivery times)."""
    holdout, global_holdout = shares
    deliver = quiet_deferral(at)
    sent = sends[CHANNELS[rule]]
    # deliveries of one customer never go back in time, so the window ends at this delivery
    if any(sum(1 for s in sent if deliver - s < window) >= most for window, most in CAPS):
        return "frequency_cap", deliver
    sent.append(deliver)
    if holdout_unit(tenant, customer, "global") < global_holdout:
        return "holdout:global", deliver
    if holdout_unit(tenant, customer, f"campaign:{rule.replace('_', '-')}") < holdout:
        return "holdout", deliver
    return None, deliver


def decisions_from_orders(
    orders: list[Order],
    tenant: str,
    rules: Collection[str] = DEFAULT_RULES,
    until: int | None = None,
    *,
    holdout_share: float = HOLDOUT_SHARE,
    global_holdout_share: float = GLOBAL_HOLDOUT_SHARE,
) -> Decisions:
    """trigger_id -> (rule, customer, cause, decided_at, deliver_after, suppressed reason or None)
    for the decisions of `rules`, from paid orders [(customer, event_id, time_ms, amount)] (ties in
    time by event id) and the clock at `until` (default: the latest order time)."""
    if until is None:
        until = max((t for _, _, t, _ in orders), default=0)
    by_customer: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
    for customer, event_id, t, _amount in orders:
        by_customer[customer].append((event_id, t))
    out: Decisions = {}
    for customer, mine in by_customer.items():
        mine.sort(key=lambda o: (o[1], o[0]))  # one instant: by event id, as the engines do
        sends: defaultdict[str, list[int]] = defaultdict(list)
        for at, _phase, _seq, rule, cause in candidates(tenant, customer, mine, until):
            shares = (holdout_share, global_holdout_share)
            reason, deliver = guard(tenant, customer, rule, at, sends, shares)
            if rule in rules:
                out[trigger_id(rule, tenant, customer, cause)] = (rule, customer, cause, at, deliver, reason)
    return out


def expected_decisions(path: str | Path, tenant: str, rules: Collection[str] = DEFAULT_RULES) -> Decisions:
    """The decisions of `rules` after replaying the CDNOW file at `path` as `tenant`, the clock
    standing at the latest event time of the data."""
    return decisions_from_orders(cdnow_orders(path), tenant, rules)
