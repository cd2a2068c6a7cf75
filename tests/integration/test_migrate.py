"""`crm migrate-keys`: data of the earlier single-node key layout becomes the unit layout and the
engine goes on from it as if it had always been there.

A stager applies orders, its keys are put back into the earlier layout (as that version wrote
them), a worker refuses to start on them, the migration rewrites them (a second run changes
nothing); then the same orders redelivered are skipped by the fences, new orders are applied on
top, and the counts, the states and the log equal those of a stager that never saw the old layout."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from crm.migrate import migrate_keys, shard_of
from services.common import keys
from services.common.avro import default_codec
from services.common.constants import REDIS_PREFIX
from services.common.fence import FLOOR
from services.common.messages import Message
from services.common.units import read_units
from services.stager.analytics import counts_now, stages_at
from services.stager.config import StageRules
from services.stager.engine import CLOCK, Engine
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings
from services.stager.statecodec import decode_state
from tests.conftest import StackInfo
from tests.integration.stager_process import ROOT

T0 = 1_700_000_000_000
PARTITIONS = 12
DAY = 86_400_000


def _orders(tenant: str, start: int, n: int) -> list[Message]:
    codec = default_codec()
    out = []
    for i in range(start, start + n):
        customer = f"c{i % 9}"
        record = {"event_id": f"{tenant}-{i}", "customer_id": customer, "tenant": tenant, "event_time": T0 + i * DAY,
                  "order_id": f"o{i}", "status": "paid", "amount": 10.0 + i}  # fmt: skip
        value = codec.encode("crm.events.Order", record)
        out.append(Message("crm.events.order", shard_of(customer, PARTITIONS), i, value))
    return out


async def _nothing(*_: Any) -> Any:
    async def done() -> None:
        return None

    return done()


def _engine(redis: Any, stack: StackInfo, group: str) -> Engine:
    settings = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, stager_group=group,
                              allowed_lateness_seconds=0)  # fmt: skip
    return Engine(redis=redis, send=_nothing, codec=default_codec(), rules=StageRules(), settings=settings,
                  metrics=StagerMetrics(CollectorRegistry()))  # fmt: skip


async def _to_old_layout(redis: Any, tenant: str, group: str) -> None:
    """What the earlier version wrote for the same data: per-customer hash tags, one fence, one
    clock hash, counts and logs per tenant and model."""
    sep = "\x1f"
    for t, shard in await read_units(redis):
        if t == tenant:
            async for key in redis.scan_iter(match=keys.customer_key(tenant, shard, "*")):
                customer = key.decode().split("}:", 1)[1]
                await redis.rename(key, f"{REDIS_PREFIX}c:{{{tenant}:{customer}}}")
            if await redis.exists(keys.timers_key(tenant, shard)):
                await redis.rename(keys.timers_key(tenant, shard), f"{REDIS_PREFIX}timers:{tenant}:{shard}")
            clock = await redis.get(keys.clock_key(CLOCK, tenant, shard))
            await redis.hset(f"{REDIS_PREFIX}clock:shards", f"{tenant}|{shard}", clock)
            await redis.delete(keys.clock_key(CLOCK, tenant, shard), keys.applied_offsets_key(group, tenant, shard))
            for model in ("pyramid", "lifecycle"):
                for field, n in (await redis.hgetall(keys.counts_key(tenant, shard, model))).items():
                    await redis.hincrby(f"{REDIS_PREFIX}counts:{tenant}:{model}", field, int(n))
                log = await redis.zrange(keys.log_key(tenant, shard, model), 0, -1, withscores=True)
                if log:
                    await redis.zadd(f"{REDIS_PREFIX}log:{tenant}:{model}", dict(log))
                await redis.delete(keys.counts_key(tenant, shard, model), keys.log_key(tenant, shard, model))
                assert all(m.decode().split(sep)[0] for m, _ in log)
        elif t == FLOOR:
            for tp, offset in (await redis.hgetall(keys.applied_offsets_key(group, FLOOR, shard))).items():
                await redis.hset(f"{REDIS_PREFIX}applied:{group}", tp, offset)
            await redis.delete(keys.applied_offsets_key(group, FLOOR, shard))
    await redis.srem(keys.units_key(), *[f"{t}|{s}" for t, s in await read_units(redis) if t == tenant])


async def _snapshot(redis: Any, tenant: str) -> tuple[Any, ...]:
    counts = {m: await counts_now(redis, tenant, m) for m in ("pyramid", "lifecycle")}
    stages = {m: await stages_at(redis, tenant, m, T0 + 10_000 * DAY) for m in ("pyramid", "lifecycle")}
    states = {}
    for t, shard in await read_units(redis):
        if t == tenant:
            async for key in redis.scan_iter(match=keys.customer_key(tenant, shard, "*")):
                customer = key.decode().split("}:", 1)[1]
                state = decode_state(await redis.hget(key, "s"))[0]
                # what differs by tenant: the hashes of the event ids (the ids name the tenant)
                states[customer] = replace(state, recent=[(r[0], r[1], 0) for r in state.recent])
    return counts, stages, states


async def test_old_layout_data_is_migrated_and_the_engine_goes_on_from_it(stack: StackInfo, tmp_path: Any) -> None:
    run = uuid.uuid4().hex[:6]
    first, second = _orders(f"mig-{run}", 0, 40), _orders(f"mig-{run}", 40, 30)
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        # the reference: one stager that applies both halves on the unit layout
        reference = _engine(redis, stack, f"ref-{run}")
        await reference.start()
        await reference.process(_orders(f"ref-{run}", 0, 40))
        await reference.process(_orders(f"ref-{run}", 40, 30))

        tenant, group = f"mig-{run}", f"mig-stager-{run}"
        engine = _engine(redis, stack, group)
        await engine.start()
        await engine.process(first)
        await _to_old_layout(redis, tenant, group)

        # a worker refuses to start on the old layout, naming what to do
        env = {"CRM_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "CRM_REDIS_URL": stack.redis_url,
               "CRM_STATE_DIR": str(tmp_path), "CRM_STAGER_WEB_PORT": "22990", "PATH": "/usr/bin:/bin"}  # fmt: skip
        refused = subprocess.run([sys.executable, "-m", "services.stager"], env=env, cwd=ROOT, capture_output=True,
                                 text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
        assert refused.returncode != 0 and "crm migrate-keys" in refused.stderr, refused.stderr[-2000:]

        groups = {"stager": group, "triggers": "t", "attribution": "a", "analytics": "n"}
        # a key of the unit layout that looks like the old one ("{tenant:customer}" with a customer
        # "3}:x}"): a run taken up again leaves it where it is
        odd = "x}"
        unit_key = keys.customer_key(f"other-{run}", shard_of(odd, PARTITIONS), odd)
        await redis.hset(unit_key, "s", b"kept")
        moved = await migrate_keys(redis, groups, PARTITIONS, print)
        assert await redis.hget(unit_key, "s") == b"kept"
        assert moved["state:c"] == 9 and moved["fences"] == 1 and moved["clocks"] >= 1, moved
        assert not await redis.exists(*keys.OLD_LAYOUT_KEYS)
        assert not [k async for k in redis.scan_iter(match=f"{REDIS_PREFIX}c:{{{tenant}:c*}}")]
        assert sum((await migrate_keys(redis, groups, PARTITIONS, print)).values()) == 0  # idempotent

        later = _engine(redis, stack, group)
        await later.start()
        await later.process(first)  # redelivered: behind the floors
        assert later.metrics.redelivered._value.get() == len(first)
        await later.process(second)
        ours, theirs = await _snapshot(redis, tenant), await _snapshot(redis, f"ref-{run}")
        assert ours[:2] == theirs[:2] and ours[0]["pyramid"]
        assert ours[2] == theirs[2] and len(ours[2]) == 9
    finally:
        await redis.aclose()
