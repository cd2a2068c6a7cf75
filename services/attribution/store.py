"""Campaign counters as the engine keeps them in Redis: per shard (the unit a batch writes in
one MULTI), summed here into one set of counters per campaign."""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.common import keys
from services.common.units import tenant_shards

__all__ = ["campaign_counters"]


async def campaign_counters(redis: Any, tenant: str) -> dict[str, tuple[str, dict[str, int]]]:
    """campaign id -> ("<rule>|<window days>", its counters summed over the tenant's shards), of
    every campaign of `tenant` with a trial, by campaign id."""
    shards = await tenant_shards(redis, tenant)
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hgetall(keys.campaigns_key(tenant, shard))
        metas = await pipe.execute()
    where: dict[str, list[int]] = {}
    meta_of: dict[str, str] = {}
    for shard, found in zip(shards, metas, strict=True):
        for campaign, meta in found.items():
            name = campaign.decode()
            where.setdefault(name, []).append(shard)
            meta_of[name] = meta.decode()
    names = sorted(where)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for shard in where[name]:
                pipe.hgetall(keys.campaign_key(tenant, shard, name))
        found = iter(await pipe.execute())
    out = {}
    for name in names:
        summed: Counter[str] = Counter()
        for _ in where[name]:
            for k, v in next(found).items():
                summed[k.decode()] += int(v)
        out[name] = (meta_of[name], dict(summed))
    return out
