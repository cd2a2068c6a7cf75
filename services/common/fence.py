"""The applied-offset fence: per partition, the next offset whose effects are not yet in Redis.

An engine writes the fence in the same MULTI/EXEC as the effects of a batch, so a batch Kafka
redelivers after a crash (or that another worker applied before a rebalance handed the
partition over) is recognised and skipped, whatever offsets Kafka had committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common import keys
from services.common.messages import Message

__all__ = ["OffsetFence"]


class OffsetFence:
    def __init__(self, redis: Any, group: str) -> None:
        self.redis = redis
        self.key = keys.applied_offsets_key(group)
        self.applied: dict[str, int] = {}  # "topic:partition" -> next offset not applied
        self._names: dict[tuple[str, int], str] = {}

    async def load(self) -> None:
        """Everything earlier runs wrote."""
        self.applied = {k.decode(): int(v) for k, v in (await self.redis.hgetall(self.key)).items()}

    async def refresh(self, messages: Sequence[Message]) -> None:
        """Re-read the fence of the partitions in `messages` (one round trip): another worker may
        have applied some of them before a rebalance handed them here."""
        tps = sorted({self._name(m) for m in messages})
        if tps:
            for tp, value in zip(tps, await self.redis.hmget(self.key, tps), strict=True):
                if value is not None:
                    self.applied[tp] = int(value)

    async def positions(self, names: list[str]) -> dict[str, int]:
        """The fence of each "topic:partition" in `names` that has one, read from Redis."""
        found = {}
        if names:
            for name, value in zip(names, await self.redis.hmget(self.key, names), strict=True):
                if value is not None:
                    found[name] = self.applied[name] = int(value)
        return found

    def admit(self, msg: Message, offsets: dict[str, int]) -> bool:
        """False if `msg` was applied already; otherwise True, with `offsets` moved past it."""
        tp = self._name(msg)
        if msg.offset < self.applied.get(tp, 0):
            return False
        if msg.offset >= offsets.get(tp, 0):
            offsets[tp] = msg.offset + 1
        return True

    def queue(self, pipe: Any, offsets: dict[str, int]) -> None:
        """Queue the write of `offsets` on `pipe`, inside the batch's MULTI."""
        if offsets:
            pipe.hset(self.key, mapping=offsets)

    def written(self, offsets: dict[str, int]) -> None:
        """The MULTI holding `offsets` has been executed."""
        self.applied.update(offsets)

    def _name(self, msg: Message) -> str:
        where = (msg.topic, msg.partition)
        name = self._names.get(where)
        if name is None:
            name = self._names[where] = f"{msg.topic}:{msg.partition}"
        return name
