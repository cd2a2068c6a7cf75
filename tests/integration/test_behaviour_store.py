"""The behaviour index in Redis (services/analytics/behaviour.py): paid orders, refunds and
category browses written batch by batch as the history worker would, in two different arrival
orders and batch sizes, with repeats and a redelivered batch, answer every window at every
instant (closed days, the instant's own day, days still open) as counting the raw events does;
a window reaching back past the retention is refused, and what is older is gone from Redis."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from services.analytics.behaviour import Act, browse_members, close_acts, paid_members, queue_acts
from services.common import keys
from tests.conftest import StackInfo

DAY = 86_400_000
T0 = 20_000 * DAY
CATEGORIES = ("c0", "c1", "c2")


def _acts(rnd: random.Random, customers: int, days: int) -> list[tuple[int, Act]]:
    """(id, act) of each customer's browses, paid orders (some paid twice, by two events) and
    refunds (some twice), over `days` days."""
    out: list[tuple[int, Act]] = []
    for ident in range(customers):
        for n in range(rnd.randint(0, 5)):
            paid = T0 + rnd.randrange(days * DAY)
            order = f"o{ident}-{n}"
            out.append((ident, Act(paid, "paid", order, "")))
            if rnd.random() < 0.2:  # the same order said paid again, later
                out.append((ident, Act(paid + rnd.randrange(6 * DAY), "paid", order, "")))
            if rnd.random() < 0.25:
                refunded = paid + rnd.randrange(6 * DAY)
                out.append((ident, Act(refunded, "refund", order, "")))
                if rnd.random() < 0.3:
                    out.append((ident, Act(refunded + rnd.randrange(5 * DAY), "refund", order, "")))
        for _ in range(rnd.randint(0, 8)):
            out.append((ident, Act(T0 + rnd.randrange(days * DAY), "browse", rnd.choice(CATEGORIES), "")))
    return out


def _arrivals(acts: list[tuple[int, Act]], rnd: random.Random, jitter: int) -> list[tuple[int, Act]]:
    """`acts` in time order, each moved up to `jitter` ms out of it."""
    return [a for _, a in sorted(((a[1].time + rnd.randrange(jitter + 1), a) for a in acts), key=lambda p: p[0])]


async def _write(redis: Any, tenant: str, shard: int, arrivals: list[tuple[int, Act]], size: int, keep: int) -> None:
    """Batches of `size`; after each, the days before everything still to come are closed (what
    the watermark guarantees: nothing arrives for a closed day)."""
    closed = -1
    for start in range(0, len(arrivals), size):
        batch = arrivals[start : start + size]
        for _ in range(2 if start == 0 else 1):  # the first batch delivered twice
            async with redis.pipeline(transaction=True) as pipe:
                queue_acts(pipe, tenant, shard, batch)
                await pipe.execute()
        rest = arrivals[start + size :]
        until = min(a.time for _, a in rest) // DAY - 1 if rest else closed
        until = min(until, (T0 // DAY) + 36)  # the last days stay open
        if until > closed:
            async with redis.pipeline(transaction=True) as pipe:
                await close_acts(redis, pipe, tenant, shard, until, keep)
                await pipe.execute()
            closed = until


def _paid(acts: list[tuple[int, Act]], at: int, days: int) -> dict[int, int]:
    """id -> orders first paid in the window and not refunded (first refund, after paying) by `at`."""
    first = (at // DAY - days + 1) * DAY
    paid: dict[tuple[int, str], int] = {}
    refunded: dict[tuple[int, str], int] = {}
    for ident, act in acts:
        into = paid if act.kind == "paid" else refunded if act.kind == "refund" else None
        if into is not None:
            into[(ident, act.key)] = min(act.time, into.get((ident, act.key), act.time))
    out: dict[int, int] = {}
    for (ident, order), p in paid.items():
        r = refunded.get((ident, order))
        if first <= p <= at and not (r is not None and p <= r <= at):
            out[ident] = out.get(ident, 0) + 1
    return out


def _holds(k: int, op: str, n: int) -> bool:
    return k >= n if op == ">=" else k > n if op == ">" else k == n


def _browsed(acts: list[tuple[int, Act]], category: str, at: int, days: int) -> set[int]:
    first = (at // DAY - days + 1) * DAY
    return {i for i, a in acts if a.kind == "browse" and a.key == category and first <= a.time <= at}


@pytest.mark.parametrize(("jitter", "size"), [(0, 40), (6 * 3_600_000, 7)])
async def test_any_arrival_and_batch_size_answer_as_counting_the_events(
    stack: StackInfo, jitter: int, size: int
) -> None:
    rnd = random.Random(11)
    acts = _acts(rnd, customers=150, days=40)
    tenant, shard = f"beh-{uuid.uuid4().hex[:8]}", 2
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        await _write(redis, tenant, shard, _arrivals(acts, random.Random(jitter), jitter), size, keep=400)
        closed = int(await redis.hget(keys.behaviour_key(tenant, shard, "meta"), "closed"))
        assert T0 // DAY + 30 < closed < T0 // DAY + 40  # closed days, and open ones after them
        instants = [T0 + rnd.randrange(-DAY, 41 * DAY) for _ in range(25)]
        instants += [(closed + 1) * DAY - 1, (closed + 1) * DAY, (closed + 2) * DAY + 5]  # either side of the edge
        for at in instants:
            for days in (1, 3, 30, 45, 3000):  # (3000: past the retention, but to before any behaviour)
                counted = _paid(acts, at, days)
                for op, n in ((">=", 1), (">=", 2), (">", 2), ("=", 1)):
                    wanted = {i for i, k in counted.items() if _holds(k, op, n)}
                    found = await paid_members(redis, tenant, shard, at, days, op, n, 400)
                    assert set(found) == wanted, (at, days, op, n)
                for category in CATEGORIES[:2]:
                    found = await browse_members(redis, tenant, shard, category, at, days, 400)
                    assert set(found) == _browsed(acts, category, at, days), (at, days, category)
    finally:
        await redis.aclose()


async def test_days_past_the_retention_are_removed_and_a_window_reaching_them_refused(stack: StackInfo) -> None:
    rnd = random.Random(3)
    acts = _acts(rnd, customers=60, days=40)
    tenant, shard = f"beh-{uuid.uuid4().hex[:8]}", 0
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        await _write(redis, tenant, shard, _arrivals(acts, rnd, 0), 25, keep=10)
        closed = int(await redis.hget(keys.behaviour_key(tenant, shard, "meta"), "closed"))
        at = closed * DAY + 3_600_000
        for days in (1, 5, 10):  # the window starts within the kept days
            counted = _paid(acts, at, days)
            assert set(await paid_members(redis, tenant, shard, at, days, ">=", 1, 10)) == set(counted)
        with pytest.raises(ValueError, match="10 days of behaviour kept"):
            await paid_members(redis, tenant, shard, at, 11, ">=", 1, 10)
        with pytest.raises(ValueError, match="10 days of behaviour kept"):
            await browse_members(redis, tenant, shard, "c0", at - 3 * DAY, 8, 10)
        days_kept = [int(d) for d in await redis.hkeys(keys.behaviour_key(tenant, shard, "pd"))]
        assert days_kept and min(days_kept) > closed - 10
        oldest = min(int(d) for d in await redis.zrange(keys.behaviour_key(tenant, shard, "bdays"), 0, -1))
        assert oldest > closed - 10
        assert not await redis.exists(keys.behaviour_key(tenant, shard, f"bd:{closed - 10}"))
        orders = await redis.zrange(keys.behaviour_key(tenant, shard, "orders"), 0, 0, withscores=True)
        assert orders[0][1] >= (closed - 9) * DAY
    finally:
        await redis.aclose()
