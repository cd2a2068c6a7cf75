"""The dashboard's answers from Redis: stage counts now or at any instant, and flows between two
instants. Counts now sum the per-stage counters of the tenant's shards; answers at an instant
replay the transition logs (a sorted set per shard and model, scored by event time; a customer
lives on one shard)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.common import keys
from services.common.units import tenant_shards
from services.stager.engine import SEP

__all__ = ["counts_at", "counts_now", "flow", "stages_at"]

NONE = "none"
_CHUNK = 20_000


async def counts_now(redis: Any, tenant: str, model: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for shard in await tenant_shards(redis, tenant):
        for k, v in (await redis.hgetall(keys.counts_key(tenant, shard, model))).items():
            counts[k.decode()] += int(v)
    return {stage: n for stage, n in sorted(counts.items()) if n}


async def stages_at(redis: Any, tenant: str, model: str, at_ms: int) -> dict[str, str]:
    """customer -> stage at instant `at_ms` (every transition at or before it applied)."""
    stage: dict[str, str] = {}
    for shard in await tenant_shards(redis, tenant):
        offset = 0
        key = keys.log_key(tenant, shard, model)
        while True:
            chunk = await redis.zrange(key, "-inf", at_ms, byscore=True, offset=offset, num=_CHUNK)
            for member in chunk:
                customer, _seq, _from, to = member.decode().split(SEP)
                if to:
                    stage[customer] = to
                else:
                    stage.pop(customer, None)
            if len(chunk) < _CHUNK:
                break
            offset += _CHUNK
    return stage


async def counts_at(redis: Any, tenant: str, model: str, at_ms: int) -> dict[str, int]:
    return dict(sorted(Counter((await stages_at(redis, tenant, model, at_ms)).values()).items()))


async def flow(redis: Any, tenant: str, model: str, from_ms: int, to_ms: int) -> dict[str, int]:
    """ "from->to" -> customers whose stage at `from_ms` differs from their stage at `to_ms`
    ("none" for no stage: newly arrived or lost)."""
    before = await stages_at(redis, tenant, model, from_ms)
    after = await stages_at(redis, tenant, model, to_ms)
    moves: Counter[str] = Counter()
    for customer in before.keys() | after.keys():
        a, b = before.get(customer, NONE), after.get(customer, NONE)
        if a != b:
            moves[f"{a}->{b}"] += 1
    return dict(sorted(moves.items()))
