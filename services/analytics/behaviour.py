"""Behaviour counts for audiences: paid orders and category browses of each customer, by day.

Two kinds of audience term read it: `paid_orders_<N>d >= k` (also `>` and `=`) and
`category:<id> browsed <N>d`. A window of N days at instant T is the N UTC days ending with T's
own day, that day up to T itself: a paid order counts when it was paid in the window and not
refunded by T; a browse counts when it fell in the window.

Stored per (tenant, shard), under `services.common.keys.behaviour_key`, like the stage history:
what arrives goes to an open part, and the days the shard's watermark has passed are closed into
compact per-day parts, so an answer reads one part per day of its window, never the whole history.

- `po`, `ro`: sorted sets of paid orders and refunds not yet closed, member "<id>|<order>", score
  the earliest time seen (ZADD LT: repeats and any arrival order give the same set);
- `bo:<category>`: sorted set of browses not yet closed, member "<day>|<id>", score the first
  time of that day; `bcats`: the categories with open browses;
- `orders`, `refunds`: sorted sets of the orders and refunds closed (member as above, score the
  time), so a repeat arriving days later counts once;
- `pd`: hash day -> the day's paid orders (`encode_paid`: "at least j orders" bitmaps for whole
  days, and each order's id and time of day for the day an instant falls in);
- `pw`: hash week -> the week's "at least j orders" bitmaps, once its last day closed (weeks of
  seven days from day 0 of the epoch): a long window reads its whole weeks, not each day;
- `rd`: hash day -> the day's refunds (`encode_refunds`: id, paid time, refund time);
- `bd:<day>`: hash category -> that day's browsers (`encode_browse`: bitmap and first time of day);
  `bdays`: the days with browses closed;
- `meta`: `closed`, the last day closed; `since`, the earliest day any behaviour was closed for.

Days older than the retention (`keep_days`) are removed as days close; a question reaching back
further, to days that held behaviour, is refused rather than answered short.
"""

from __future__ import annotations

import struct
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap

from services.analytics.history import DAY_MS
from services.common.keys import behaviour_key

__all__ = [
    "Act",
    "at_least",
    "browse_members",
    "close_acts",
    "compare",
    "decode_browse",
    "decode_layers",
    "decode_paid",
    "decode_refunds",
    "encode_browse",
    "encode_layers",
    "encode_paid",
    "encode_refunds",
    "layers_of",
    "paid_members",
    "queue_acts",
]

KINDS = ("browse", "paid", "refund")
WEEK = 7  # days


@dataclass(frozen=True, slots=True)
class Act:
    """One behaviour as the index takes it: a browse of a category, an order paid or refunded."""

    time: int
    kind: str  # one of KINDS
    key: str  # the category (browse) or the order id (paid, refund)
    origin: str


# --- encodings (pure) ---------------------------------------------------------------------------
def _parts(*blobs: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def _unparts(raw: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def _array(kind: str, raw: bytes) -> array[int]:
    out = array(kind)
    out.frombytes(raw)
    return out


def encode_browse(first: dict[int, int]) -> bytes:
    """A day's browsers of one category: id -> first time of day (ms since the day began)."""
    members = BitMap(first)
    return _parts(members.serialize(), array("I", (first[i] for i in members)).tobytes())


def decode_browse(raw: bytes, until: int | None = None) -> BitMap:
    """The browsers of an encoded day; with `until` (ms of the day), only those who had browsed
    by then."""
    members, firsts = _unparts(raw)
    found = BitMap.deserialize(members)
    if until is None:
        return found
    return BitMap(i for i, t in zip(found, _array("I", firsts), strict=True) if t <= until)


def layers_of(counts: dict[int, int]) -> list[BitMap]:
    """[customers with at least 1, at least 2, ...] of id -> count."""
    top = max(counts.values(), default=0)
    return [BitMap(i for i, n in counts.items() if n >= j) for j in range(1, top + 1)]


def encode_paid(orders: Sequence[tuple[int, int]]) -> bytes:
    """A day's paid orders, (id, ms of the day) each: the layers, then ids and times by time."""
    ordered = sorted(orders, key=lambda o: (o[1], o[0]))
    layers = layers_of(Counter(i for i, _ in ordered))
    ids, times = array("I", (i for i, _ in ordered)), array("I", (t for _, t in ordered))
    return _parts(ids.tobytes(), times.tobytes(), *(b.serialize() for b in layers))


def decode_paid(raw: bytes, until: int | None = None) -> list[BitMap]:
    """The layers of an encoded day; with `until` (ms of the day), of the orders paid by then."""
    ids, times, *layers = _unparts(raw)
    if until is None:
        return [BitMap.deserialize(b) for b in layers]
    kept = Counter(i for i, t in zip(_array("I", ids), _array("I", times), strict=True) if t <= until)
    return layers_of(kept)


def encode_layers(layers: list[BitMap]) -> bytes:
    """A week's "at least j" bitmaps."""
    return _parts(*(b.serialize() for b in layers))


def decode_layers(raw: bytes) -> list[BitMap]:
    return [BitMap.deserialize(b) for b in _unparts(raw)]


def encode_refunds(refunds: Sequence[tuple[int, int, int]]) -> bytes:
    """A day's refunds: (id, time paid, time refunded) each."""
    return _parts(
        array("I", (r[0] for r in refunds)).tobytes(),
        array("q", (r[1] for r in refunds)).tobytes(),
        array("q", (r[2] for r in refunds)).tobytes(),
    )


def decode_refunds(raw: bytes) -> list[tuple[int, int, int]]:
    ids, paid, refunded = (_array(k, b) for k, b in zip("Iqq", _unparts(raw), strict=True))
    return list(zip(ids, paid, refunded, strict=True))


# --- counting (pure) ----------------------------------------------------------------------------
def at_least(days: Iterable[list[BitMap]], top: int) -> list[BitMap]:
    """[A_1 .. A_top]: A_j the customers with at least j in total over `days` (each a day's
    layers, as `layers_of`). A day adds i to a customer in its layer i and not i + 1, so after it
    A_j holds who had j before, or j - i before and at least i that day."""
    found = [BitMap() for _ in range(top + 1)]  # found[0] stands for everyone
    for layers in days:
        if not layers:
            continue
        new = [found[0]]
        for j in range(1, top + 1):
            acc = found[j] | layers[j - 1] if j <= len(layers) else found[j].copy()
            for i in range(1, min(j - 1, len(layers)) + 1):
                acc |= found[j - i] & layers[i - 1]
            new.append(acc)
        found = new
    return found[1:]


def compare(totals: list[BitMap], minus: dict[int, int], op: str, n: int) -> BitMap:
    """The customers whose total less `minus` (refunds) satisfies `op n` (`>=`, `>`, `=`), given
    `totals` = at_least(days, top) with top >= n + 1 + max(minus)."""

    def net(j: int) -> BitMap:
        if j <= 0:
            raise ValueError("a count compared must be at least 1")
        if not minus:
            return totals[j - 1].copy()
        taken = BitMap(minus)
        out = totals[j - 1] - taken
        for ident, less in minus.items():
            level = sum(1 for layer in totals if ident in layer)  # layers nest: the count, up to top
            if level - less >= j:
                out.add(ident)
        return out

    if op == ">=":
        return net(n)
    if op == ">":
        return net(n + 1)
    return net(n) - net(n + 1)


# --- Redis: writing -----------------------------------------------------------------------------
def queue_acts(pipe: Any, tenant: str, shard: int, acts: Iterable[tuple[int, Act]]) -> None:
    """Queue the open entries of `acts` ((id, act) each): the earliest time of each member wins,
    whatever the order or how often they come."""
    browses: dict[str, dict[str, int]] = {}
    orders: dict[str, dict[str, int]] = {"paid": {}, "refund": {}}
    for ident, act in acts:
        if act.kind == "browse":
            member, into = f"{act.time // DAY_MS}|{ident}", browses.setdefault(act.key, {})
        else:
            member, into = f"{ident}|{act.key}", orders[act.kind]
        into[member] = min(act.time, into.get(member, act.time))
    for category, members in browses.items():
        pipe.zadd(behaviour_key(tenant, shard, f"bo:{category}"), members, lt=True)
    if browses:
        pipe.sadd(behaviour_key(tenant, shard, "bcats"), *browses)
    for kind, part in (("paid", "po"), ("refund", "ro")):
        if orders[kind]:
            pipe.zadd(behaviour_key(tenant, shard, part), orders[kind], lt=True)


def _ident(member: bytes, first: bool) -> int:
    """The customer id of an open member ("<id>|<order>" or "<day>|<id>")."""
    head, _, tail = member.partition(b"|")
    return int(head if first else tail)


async def close_acts(redis: Any, pipe: Any, tenant: str, shard: int, until: int, keep_days: int) -> None:
    """Read the open entries of days up to `until` and queue (into the MULTI `pipe`) their closed
    parts, the open entries' removal and the retention's trimming."""

    def key(part: str) -> str:
        return behaviour_key(tenant, shard, part)

    end = (until + 1) * DAY_MS - 1
    categories = sorted(c.decode() for c in await redis.smembers(key("bcats")))
    async with redis.pipeline(transaction=False) as read:
        for category in categories:
            read.zrangebyscore(key(f"bo:{category}"), "-inf", end, withscores=True)
            read.zcard(key(f"bo:{category}"))
        read.zrangebyscore(key("po"), "-inf", end, withscores=True)
        read.zrangebyscore(key("ro"), "-inf", end, withscores=True)
        found = await read.execute()
    days: dict[int, dict[str, bytes]] = {}
    for i, category in enumerate(categories):
        entries, left = found[2 * i], found[2 * i + 1]
        by_day: dict[int, dict[int, int]] = {}
        for member, score in entries:
            day, ident = int(member.split(b"|", 1)[0]), _ident(member, False)
            by_day.setdefault(day, {})[ident] = int(score) - day * DAY_MS
        for day, first in by_day.items():
            days.setdefault(day, {})[category] = encode_browse(first)
        if entries:
            pipe.zremrangebyscore(key(f"bo:{category}"), "-inf", end)
        if left == len(entries):
            pipe.srem(key("bcats"), category)
    for day, blobs in days.items():
        pipe.hset(key(f"bd:{day}"), mapping=blobs)
        pipe.zadd(key("bdays"), {str(day): day})
    paid, refunds = found[-2], found[-1]
    closed_before, since = await redis.hmget(key("meta"), ["closed", "since"])
    fresh, refund_days = await _close_orders(redis, pipe, key, paid, refunds, end)
    await _close_weeks(redis, pipe, key, fresh, -1 if closed_before is None else int(closed_before), until)
    held = [*days, *fresh, *refund_days]
    await _trim(redis, pipe, key, until - keep_days)
    if held and (since is None or min(held) < int(since)):
        pipe.hset(key("meta"), "since", min(held))
    pipe.hset(key("meta"), "closed", until)


async def _close_orders(
    redis: Any, pipe: Any, key: Any, paid: list[Any], refunds: list[Any], end: int
) -> tuple[dict[int, list[tuple[int, int]]], list[int]]:
    """Queue the closing of the open orders and refunds up to `end`; the orders closed by day
    ((id, ms of the day) each) and the days of the refunds closed."""
    members = [m for m, _ in paid] + [m for m, _ in refunds]
    known = await redis.zmscore(key("orders"), members) if members else []
    refunded = await redis.zmscore(key("refunds"), [m for m, _ in refunds]) if refunds else []
    paid_at = {m: int(s) for m, s in zip(members, known, strict=True) if s is not None}
    new = {m: int(s) for m, s in paid if m not in paid_at}
    by_day: dict[int, list[tuple[int, int]]] = {}
    for member, at in new.items():
        by_day.setdefault(at // DAY_MS, []).append((_ident(member, True), at % DAY_MS))
    for day, orders in by_day.items():
        pipe.hset(key("pd"), str(day), encode_paid(orders))
    paid_at.update(new)
    taken: dict[int, list[tuple[int, int, int]]] = {}
    new_refunds: dict[bytes, int] = {}
    for (member, score), before in zip(refunds, refunded, strict=True):
        at, was = int(score), paid_at.get(member)
        if before is None and was is not None and was <= at:
            taken.setdefault(at // DAY_MS, []).append((_ident(member, True), was, at))
            new_refunds[member] = at
    for day, entries in taken.items():
        pipe.hset(key("rd"), str(day), encode_refunds(entries))
    if new:
        pipe.zadd(key("orders"), new)
    if new_refunds:
        pipe.zadd(key("refunds"), new_refunds)
    if paid:
        pipe.zremrangebyscore(key("po"), "-inf", end)
    if refunds:
        pipe.zremrangebyscore(key("ro"), "-inf", end)
    return by_day, list(taken)


async def _close_weeks(
    redis: Any, pipe: Any, key: Any, fresh: dict[int, list[tuple[int, int]]], before: int, until: int
) -> None:
    """Queue the layers of every week with paid orders whose last day closes now (after day
    `before`, up to `until`): the counts of its seven days, closed now (`fresh`) or before."""
    have = {int(d) for d in await redis.hkeys(key("pd"))} | set(fresh)
    for week in sorted({d // WEEK for d in have if before < d // WEEK * WEEK + WEEK - 1 <= until}):
        days = range(week * WEEK, (week + 1) * WEEK)
        stored = [str(d) for d in days if d in have and d not in fresh]
        counts: Counter[int] = Counter(i for d in days for i, _ in fresh.get(d, []))
        for raw in await redis.hmget(key("pd"), stored) if stored else []:
            if raw:
                counts.update(_array("I", _unparts(raw)[0]))
        pipe.hset(key("pw"), str(week), encode_layers(layers_of(counts)))


async def _trim(redis: Any, pipe: Any, key: Any, last_dropped: int) -> None:
    """Queue the removal of every day up to `last_dropped`."""
    if last_dropped < 0:
        return
    old = [int(d) for d in await redis.zrangebyscore(key("bdays"), "-inf", last_dropped)]
    for day in old:
        pipe.delete(key(f"bd:{day}"))
    if old:
        pipe.zremrangebyscore(key("bdays"), "-inf", last_dropped)
    for part in ("pd", "rd"):
        stale = [d for d in await redis.hkeys(key(part)) if int(d) <= last_dropped]
        if stale:
            pipe.hdel(key(part), *stale)
    weeks = [w for w in await redis.hkeys(key("pw")) if (int(w) + 1) * WEEK - 1 <= last_dropped]
    if weeks:
        pipe.hdel(key("pw"), *weeks)
    for part in ("orders", "refunds"):
        pipe.zremrangebyscore(key(part), "-inf", (last_dropped + 1) * DAY_MS - 1)


# --- Redis: reading -----------------------------------------------------------------------------
async def _window(redis: Any, tenant: str, shard: int, at: int, days: int, keep_days: int) -> tuple[int, int, int, int]:
    """(first day of the window, first closed day worth reading in it (none before the first day
    any behaviour was closed for), last day closed, start of what is open); ValueError when the
    window reaches back to days removed by the retention (days before any behaviour are not)."""
    closed_raw, since_raw = await redis.hmget(behaviour_key(tenant, shard, "meta"), ["closed", "since"])
    closed = -1 if closed_raw is None else int(closed_raw)
    first = at // DAY_MS - days + 1
    if first <= closed - keep_days and since_raw is not None and int(since_raw) <= closed - keep_days:
        raise ValueError(f"reaches back before the {keep_days} days of behaviour kept")
    since = closed + 1 if since_raw is None else int(since_raw)
    return first, max(first, since), closed, (closed + 1) * DAY_MS


async def browse_members(
    redis: Any, tenant: str, shard: int, category: str, at: int, days: int, keep_days: int
) -> BitMap:
    """The ids of shard `shard` who browsed `category` in the `days` days up to `at`."""
    first, held, closed, open_from = await _window(redis, tenant, shard, at, days, keep_days)
    today = at // DAY_MS
    async with redis.pipeline(transaction=False) as read:
        whole = list(range(held, min(today - 1, closed) + 1))
        for day in whole:
            read.hget(behaviour_key(tenant, shard, f"bd:{day}"), category)
        if today <= closed:
            read.hget(behaviour_key(tenant, shard, f"bd:{today}"), category)
        else:
            read.zrangebyscore(behaviour_key(tenant, shard, f"bo:{category}"), max(open_from, first * DAY_MS), at)
        found = await read.execute()
    out = BitMap()
    for raw in found[: len(whole)]:
        if raw:
            out |= decode_browse(raw)
    last = found[len(whole)]
    if today <= closed:
        if last:
            out |= decode_browse(last, at - today * DAY_MS)
    else:
        out.update(_ident(m, False) for m in last)
    return out


async def _refunded(
    redis: Any, key: Any, closed: list[bytes | None], open_refunds: list[Any], start: int, at: int
) -> Counter[int]:
    """id -> its orders paid from `start` on and refunded by `at`: from the closed days' refunds
    and the open ones (each once, and only of an order known paid before its refund)."""
    minus: Counter[int] = Counter()
    for raw in closed:
        for ident, paid, refunded in decode_refunds(raw) if raw else []:
            if refunded <= at and paid >= start:
                minus[ident] += 1
    if open_refunds:
        names = [m for m, _ in open_refunds]
        async with redis.pipeline(transaction=False) as read:
            read.zmscore(key("refunds"), names)
            read.zmscore(key("orders"), names)
            read.zmscore(key("po"), names)
            done, closed_paid, open_paid_at = await read.execute()
        for (member, score), was, p1, p2 in zip(open_refunds, done, closed_paid, open_paid_at, strict=True):
            paid_at = p1 if p1 is not None else p2
            if was is None and paid_at is not None and start <= paid_at <= score:
                minus[_ident(member, True)] += 1
    return minus


async def _whole_days(redis: Any, key: Any, first: int, last: int) -> list[list[BitMap]]:
    """The layers of the paid orders of days `first` to `last`, closed: whole weeks from their
    week's part, the other days from their own."""
    low, high = -(-first // WEEK), (last + 1) // WEEK  # the weeks wholly inside: low .. high - 1
    weeks = await redis.hmget(key("pw"), [str(w) for w in range(low, high)]) if high > low else []
    days = [str(d) for d in range(first, last + 1) if not low <= d // WEEK < high or weeks[d // WEEK - low] is None]
    found = await redis.hmget(key("pd"), days) if days else []
    return [decode_layers(raw) for raw in weeks if raw] + [decode_paid(raw) for raw in found if raw]


async def paid_members(
    redis: Any, tenant: str, shard: int, at: int, days: int, op: str, n: int, keep_days: int
) -> BitMap:
    """The ids of shard `shard` whose paid orders in the `days` days up to `at`, less those
    refunded by `at`, satisfy `op n`."""
    first, held, closed, open_from = await _window(redis, tenant, shard, at, days, keep_days)
    today, start = at // DAY_MS, first * DAY_MS

    def key(part: str) -> str:
        return behaviour_key(tenant, shard, part)

    refund_days = [str(d) for d in range(held, min(today, closed) + 1)]
    layers = await _whole_days(redis, key, held, min(today - 1, closed))
    async with redis.pipeline(transaction=False) as read:
        read.hget(key("pd"), str(today))
        read.hmget(key("rd"), refund_days or ["-1"])
        read.zrangebyscore(key("po"), max(open_from, start), at)
        read.zrangebyscore(key("ro"), max(open_from, start), at, withscores=True)
        today_raw, refund_raw, open_paid, open_refunds = await read.execute()
    if today <= closed:
        if today_raw:
            layers.append(decode_paid(today_raw, at - today * DAY_MS))
    elif open_paid:
        again = await redis.zmscore(key("orders"), open_paid)  # a repeat of an order closed before
        fresh = Counter(_ident(m, True) for m, s in zip(open_paid, again, strict=True) if s is None)
        layers.append(layers_of(fresh))
    minus = await _refunded(redis, key, refund_raw, open_refunds, start, at)
    top = n + 1 + max(minus.values(), default=0)
    return compare(at_least(layers, top), dict(minus), op, n)
