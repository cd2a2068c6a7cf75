"""The applied-offset fence: per unit (a tenant's shard) and input partition, the next offset
whose effects on the unit are not yet in Redis; per shard, a floor below which every record is
applied in every unit.

An engine writes a unit's fence in the same MULTI/EXEC as the unit's effects of a batch, and the
floor once every unit of the batch is written, so a batch Kafka redelivers after a crash (or
that another worker applied before a rebalance handed the partition over) is recognised and
skipped, whatever offsets Kafka had committed: a record is applied when its offset is below its
unit's fence or below the floor. Partitions are placed at the floor, and Kafka commits it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.common import keys
from services.common.units import read_floors

__all__ = ["FLOOR", "OffsetFence", "Unit"]

Unit = tuple[str, int]  # (tenant, shard)
FLOOR = ""  # the tenant of a shard's own unit: its fence is the shard's floor


class OffsetFence:
    def __init__(self, redis: Any, group: str) -> None:
        self.redis = redis
        self.group = group
        self.applied: dict[str, int] = {}  # "topic:partition" -> floor: next offset not applied in every unit
        self.units: dict[Unit, dict[str, int]] = {}  # unit -> "topic:partition" -> next offset not applied

    def key(self, unit: Unit) -> str:
        return keys.applied_offsets_key(self.group, *unit)

    async def load(self) -> None:
        """The floors earlier runs wrote (the units' fences are read with their batches)."""
        self.applied = await read_floors(self.redis, self.group)
        self.units.clear()

    async def refresh(self, units: Iterable[Unit]) -> None:
        """Re-read the fences of `units` and the floors of their shards (one round trip): another
        worker may have applied some of them before a rebalance handed them here."""
        wanted = sorted(set(units) | {(FLOOR, shard) for _, shard in units})
        if not wanted:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for unit in wanted:
                pipe.hgetall(self.key(unit))
            found = await pipe.execute()
        for unit, stored in zip(wanted, found, strict=True):
            values = {k.decode(): int(v) for k, v in stored.items()}
            if unit[0] == FLOOR:
                self.applied.update(values)
            self.units[unit] = values

    async def positions(self, names: list[str]) -> dict[str, int]:
        """The floor of each "topic:partition" in `names` that has one, read from Redis."""
        shards = sorted({int(name.rsplit(":", 1)[1]) for name in names})
        if not shards:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.hmget(self.key((FLOOR, shard)), [n for n in names if n.endswith(f":{shard}")])
            found = await pipe.execute()
        out = {}
        for shard, values in zip(shards, found, strict=True):
            for name, value in zip([n for n in names if n.endswith(f":{shard}")], values, strict=True):
                if value is not None:
                    out[name] = self.applied[name] = int(value)
        return out

    def done(self, unit: Unit, tp: str, offset: int) -> bool:
        """Whether the record at `offset` of `tp` was applied to `unit` already."""
        return offset < self.applied.get(tp, 0) or offset < self.units.get(unit, {}).get(tp, 0)

    def queue(self, pipe: Any, unit: Unit, offsets: dict[str, int]) -> None:
        """Queue the write of `unit`'s new `offsets` on `pipe`, inside the unit's MULTI."""
        if offsets:
            pipe.hset(self.key(unit), mapping=offsets)

    def written(self, unit: Unit, offsets: dict[str, int]) -> None:
        """The MULTI holding `offsets` of `unit` has been executed."""
        self.units.setdefault(unit, {}).update(offsets)
        if unit[0] == FLOOR:
            for tp, offset in offsets.items():
                self.applied[tp] = max(self.applied.get(tp, 0), offset)
