"""An independent batch computation of the default stage rules (shared/DOMAIN.md), written
directly from the text, to check the streaming stager against. It shares no code with it."""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

Event = tuple[int, str, float]  # (time_ms, behaviour, amount)

DAY = 86_400_000
MIN = 60_000


def taobao_events(path: str | Path) -> defaultdict[str, list[Event]]:
    """customer -> [(time_ms, behaviour)] of the Taobao sample."""
    out: defaultdict[str, list[Event]] = defaultdict(list)
    with open(path) as fh:
        for line in fh:
            user, _item, _cat, behaviour, ts = line.strip().split(",")
            out[user].append((int(ts) * 1000, behaviour, 0.0))
    return out


def cdnow_events(path: str | Path) -> defaultdict[str, list[Event]]:
    from datetime import UTC, datetime

    out: defaultdict[str, list[Event]] = defaultdict(list)
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue
            if len(parts) == 5:  # the sample: orig_id sample_id date cds value
                parts = [parts[0], *parts[2:]]
            day = datetime.strptime(parts[1], "%Y%m%d").replace(tzinfo=UTC)
            out[parts[0].lstrip("0") or "0"].append((int(day.timestamp() * 1000), "buy", float(parts[3])))
    return out


def expected_stages(events_by_customer: Mapping[str, Iterable[Event]], now: int) -> defaultdict[str, dict[str, str]]:
    """model -> {customer: stage} at instant `now`, from the events at or before it."""
    out: defaultdict[str, dict[str, str]] = defaultdict(dict)
    for customer, evs in events_by_customer.items():
        past = sorted(e for e in evs if e[0] <= now)
        if past:
            for model, stage in stages(past, now).items():
                if stage is not None:
                    out[model][customer] = stage
    return out


def expected_counts(
    events_by_customer: Mapping[str, Iterable[Event]], now: int | None = None
) -> dict[str, dict[str, int]]:
    """model -> {stage: customers} at `now` (default: the latest event time of the data)."""
    if now is None:
        now = max(t for evs in events_by_customer.values() for t, _, _ in evs)
    counts: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    for model, by_customer in expected_stages(events_by_customer, now).items():
        for stage in by_customer.values():
            counts[model][stage] += 1
    return {m: dict(c) for m, c in counts.items()}


def expected_flow(events_by_customer: Mapping[str, Iterable[Event]], model: str, t0: int, t1: int) -> dict[str, int]:
    """ "from->to" -> customers whose stage at t0 differs from the one at t1 ("none": no stage)."""
    before = expected_stages(events_by_customer, t0)[model]
    after = expected_stages(events_by_customer, t1)[model]
    moves: defaultdict[str, int] = defaultdict(int)
    for customer in before.keys() | after.keys():
        a, b = before.get(customer, "none"), after.get(customer, "none")
        if a != b:
            moves[f"{a}->{b}"] += 1
    return dict(sorted(moves.items()))


def stages(evs: list[Event], now: int) -> dict[str, str | None]:
    buys = [t for t, b, _ in evs if b == "buy"]
    interest = [t for t, b, _ in evs if b in ("fav", "cart")]
    browses = [t for t, b, _ in evs if b == "pv"]
    last = max(t for t, _, _ in evs)
    out: dict[str, str | None] = {}
    n = len(buys)
    out["pyramid"] = (
        "loyal"
        if n >= 3
        else "repeat"
        if n == 2
        else "first_purchase"
        if n == 1
        else "considering"
        if interest
        else "aware"
    )
    in90 = [t for t in buys if now - t < 90 * DAY]
    out["aipl"] = (
        "L"
        if len(in90) >= 2
        else "P"
        if in90
        else "I"
        if any(now - t < 90 * DAY for t in interest)
        else "A"
        if any(now - t < 90 * DAY for t in browses)
        else None
    )
    if not buys:  # neither dataset has brand follows: membership starts with the first purchase
        out["lifecycle"] = "prospect"
    elif now - last >= 180 * DAY:
        out["lifecycle"] = "churned"
    elif now - max(buys) >= 90 * DAY:
        out["lifecycle"] = "declining"
    else:
        out["lifecycle"] = "mature" if n >= 4 else "developing" if n >= 2 else "new"
    # the last session: walk back from the last event while gaps stay under 30 minutes
    times = sorted(evs)
    start = len(times) - 1
    while start > 0 and times[start][0] - times[start - 1][0] < 30 * MIN:
        start -= 1
    step = {"pv": 1, "cart": 2, "fav": 2, "buy": 4}
    best = max(step[b] for _, b, _ in times[start:])
    out["path"] = None if now - last >= 30 * MIN else {1: "browsing", 2: "selecting", 4: "paid"}[best]
    # SICAS over its own 90-day window, highest first: share (a referral credit), action (a paid
    # order), connect (a follow of the brand, a store or an official account), interest (a product
    # favourite or a cart add), sense (a browse). Neither dataset has referrals or brand follows.
    in_window = {b for t, b, _ in evs if now - t < 90 * DAY}
    out["sicas"] = (
        "action"
        if "buy" in in_window
        else "interest"
        if in_window & {"fav", "cart"}
        else "sense"
        if "pv" in in_window
        else None
    )
    cents = sum(round(a * 100) for t, b, a in evs if b == "buy" and now - t < 365 * DAY)
    recent = sum(1 for t, _, _ in evs if now - t < 30 * DAY)
    out["value_grid"] = f"{'high' if cents >= 50000 else 'low'}_value_{'high' if recent >= 5 else 'low'}_interaction"
    return out


def paid_counts(events_by_customer: Mapping[str, Iterable[Event]], at: int, days: int) -> dict[str, int]:
    """customer -> paid orders (each `buy` one, no refunds in these datasets) in the `days` UTC
    days ending with the day of `at`, up to `at`."""
    first = (at // DAY - days + 1) * DAY
    out: dict[str, int] = {}
    for customer, evs in events_by_customer.items():
        n = sum(1 for t, kind, _ in evs if kind == "buy" and first <= t <= at)
        if n:
            out[customer] = n
    return out


def taobao_browses(path: str | Path) -> defaultdict[str, list[tuple[int, str]]]:
    """customer -> [(time_ms, category)] of the page views of the Taobao sample."""
    out: defaultdict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(path) as fh:
        for line in fh:
            user, _item, category, behaviour, ts = line.strip().split(",")
            if behaviour == "pv":
                out[user].append((int(ts) * 1000, category))
    return out


def browsed(browses: Mapping[str, Iterable[tuple[int, str]]], category: str, at: int, days: int) -> set[str]:
    """The customers who viewed `category` in the `days` UTC days ending with the day of `at`, up to `at`."""
    first = (at // DAY - days + 1) * DAY
    return {c for c, evs in browses.items() if any(k == category and first <= t <= at for t, k in evs)}
