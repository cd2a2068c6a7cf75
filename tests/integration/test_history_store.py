"""The stage history kept in Redis (services/analytics/store.py): written batch by batch as a
worker would, read back only in the parts a question needs, it answers as a plain replay of the
same transitions does. Profile attributes and follows: the latest update holds, whatever order
the updates arrive in (services/analytics/engine.py `queue_facts`)."""

from __future__ import annotations

import random
import uuid
from typing import cast

from redis.asyncio import Redis

from services.analytics.engine import Facts, queue_facts
from services.analytics.history import DAY_MS, Transition
from services.analytics.query import bitmap_of
from services.analytics.store import load_for_read, load_for_write, queue_changes, queue_open
from services.common import keys
from tests.conftest import StackInfo
from tests.unit.test_history import STAGES, T0, naive_counts, naive_flow, replay


def _history(rnd: random.Random, customers: int, days: int) -> list[Transition]:
    out: list[Transition] = []
    for ident in range(customers):
        for _ in range(rnd.randint(1, 6)):
            out.append((T0 + rnd.randrange(days * DAY_MS), ident, rnd.choice([*STAGES, None])))
    return sorted(out, key=lambda t: t[0])


async def test_written_in_batches_and_read_in_parts_it_answers_as_a_replay(stack: StackInfo) -> None:
    rnd = random.Random(5)
    transitions = _history(rnd, customers=300, days=40)
    tenant, model, shard = f"hist-{uuid.uuid4().hex[:8]}", "lifecycle", 3
    redis = Redis.from_url(stack.redis_url)
    try:
        # batches of up to 50 in time order; the watermark closes the days a day behind the newest
        # (each batch's transitions are added as they come, then the days closed in their own step)
        for start in range(0, len(transitions), 50):
            batch = transitions[start : start + 50]
            async with redis.pipeline(transaction=True) as pipe:
                queue_open(pipe, tenant, model, shard, STAGES, enumerate(batch, start))
                await pipe.execute()
            history = await load_for_write(redis, tenant, model, shard, STAGES, snapshot_every=3)
            before = len(history.order)
            history.close_until(batch[-1][0] // DAY_MS - 1)
            async with redis.pipeline(transaction=True) as pipe:
                queue_changes(pipe, tenant, model, shard, history, before)
                await pipe.execute()
        # a redelivered batch adds nothing twice
        async with redis.pipeline(transaction=True) as pipe:
            queue_open(pipe, tenant, model, shard, STAGES, [(len(transitions) - 1, transitions[-1])])
            await pipe.execute()
        instants = [T0 + rnd.randrange(-DAY_MS, 41 * DAY_MS) for _ in range(40)]
        for at in instants:
            found = await load_for_read(redis, tenant, model, shard, STAGES, [at], snapshot_every=3)
            assert len(found.days) <= 4 and len(found.snapshots) <= 1  # the parts it needs, no more
            assert found.counts_at(at) == naive_counts(transitions, at), at
            expected = replay(transitions, at)
            members = {s: set(b) for s, b in found.members_at(at).items()}
            assert members == {s: {c for c, st in expected.items() if st == s} for s in STAGES}
        for t0, t1 in zip(instants[::2], instants[1::2], strict=True):
            t0, t1 = sorted((t0, t1))
            found = await load_for_read(redis, tenant, model, shard, STAGES, [t0, t1], snapshot_every=3)
            assert found.flow(t0, t1) == naive_flow(transitions, t0, t1)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"crm:hist:{{{tenant}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def _apply_facts(redis: Redis, tenant: str, facts: list[tuple[int, Facts]]) -> None:
    key = keys.attribute_state_key(tenant, 0)
    fields = sorted({f"{ident}|{name}" for ident, f in facts for name, _ in f.values})
    current = dict(zip(fields, cast(list[bytes | None], await redis.hmget(key, fields)), strict=True))
    async with redis.pipeline(transaction=True) as pipe:
        queue_facts(pipe, tenant, 0, facts, current)
        await pipe.execute()


async def _members(redis: Redis, tenant: str, name: str, values: list[str]) -> dict[str, set[int]]:
    return {
        v: set(bitmap_of(cast(bytes | None, await redis.get(keys.attribute_key(tenant, 0, name, v))))) for v in values
    }


async def test_the_latest_profile_update_holds_whatever_order_updates_arrive_in(stack: StackInfo) -> None:
    rnd = random.Random(11)
    cities = ["Shanghai", "Beijing", "Hang|zhou"]  # ids and values may hold the separator of keys
    updates = [(ident, Facts(1_000 + rnd.randrange(50), f"e|{n}", (("city", rnd.choice(cities)),
               ("follow:brand", rnd.choice(["1", None]))), "o"))
               for n, ident in enumerate(rnd.choices(range(40), k=300))]  # fmt: skip
    expected: dict[str, dict[int, str | None]] = {"city": {}, "follow:brand": {}}
    for ident, f in sorted(updates, key=lambda u: (u[1].time, u[1].event_id)):
        for name, value in f.values:
            expected[name][ident] = value
    redis = Redis.from_url(stack.redis_url)
    tenants = [f"facts-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        await _apply_facts(redis, tenants[0], updates)  # one batch
        shuffled = updates[:]
        rnd.shuffle(shuffled)
        for start in range(0, len(shuffled), 7):  # batches of seven, in another order, one repeated
            await _apply_facts(redis, tenants[1], shuffled[start : start + 7])
        await _apply_facts(redis, tenants[1], shuffled[:7])
        for tenant in tenants:
            cities_now = await _members(redis, tenant, "city", cities)
            assert cities_now == {c: {i for i, v in expected["city"].items() if v == c} for c in cities}
            follows = (await _members(redis, tenant, "follow:brand", ["1"]))["1"]
            assert follows == {i for i, v in expected["follow:brand"].items() if v == "1"}
    finally:
        for tenant in tenants:
            found = [k async for k in redis.scan_iter(match=f"crm:hist:{{{tenant}:*")]
            if found:
                await redis.delete(*found)
        await redis.aclose()
