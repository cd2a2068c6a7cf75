"""The units engines have written (a tenant's shard each, see `services.common.keys`) and what
is read across them: every service's shard clocks, the floor fences, a tenant's shards."""

from __future__ import annotations

from typing import Any

from services.common import keys

__all__ = ["Units", "read_clocks", "read_floors", "read_units", "tenant_shards"]


async def read_units(redis: Any) -> list[tuple[str, int]]:
    """Every unit (tenant, shard) any engine registered, sorted."""
    found = []
    for raw in await redis.smembers(keys.units_key()):
        tenant, shard = raw.decode().rsplit("|", 1)
        found.append((tenant, int(shard)))
    return sorted(found)


async def tenant_shards(redis: Any, tenant: str) -> list[int]:
    """The shards of `tenant` with data."""
    return [shard for t, shard in await read_units(redis) if t == tenant]


async def read_clocks(redis: Any, service: str, units: list[tuple[str, int]] | None = None) -> dict[bytes, bytes]:
    """`service`'s clock of every unit (or of `units`) that has one, as "<tenant>|<shard>" ->
    "<latest>:<watermark>[:<ceiling>]" (what `services.common.clock.merge_shard_clocks` reads)."""
    wanted = [(t, s) for t, s in (await read_units(redis) if units is None else units) if t]
    if not wanted:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for tenant, shard in wanted:
            pipe.get(keys.clock_key(service, tenant, shard))
        values = await pipe.execute()
    return {f"{t}|{s}".encode(): v for (t, s), v in zip(wanted, values, strict=True) if v is not None}


async def read_floors(redis: Any, group: str) -> dict[str, int]:
    """ "topic:partition" -> the floor fence of `group` (every record below it applied)."""
    shards = sorted({s for _, s in await read_units(redis)})
    if not shards:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hgetall(keys.applied_offsets_key(group, "", shard))
        found = await pipe.execute()
    return {k.decode(): int(v) for floor in found for k, v in floor.items()}


class Units:
    """The units registered, as far as this process knows; `add` registers new ones (outside any
    MULTI, before the writes that need them: a unit is found from the set once it has data)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.known: set[tuple[str, int]] = set()

    async def load(self) -> list[tuple[str, int]]:
        found = await read_units(self.redis)
        self.known.update(found)
        return found

    async def add(self, units: set[tuple[str, int]]) -> None:
        new = units - self.known
        if not new:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.units_key(), *(f"{t}|{s}" for t, s in sorted(new)))
            tenants = {t for t, _ in new if t}
            if tenants:
                pipe.sadd(keys.tenants_key(), *sorted(tenants))
            await pipe.execute()
        self.known |= new
