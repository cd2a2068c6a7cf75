"""The outbox: records a batch decided, kept in Redis until Kafka has them.

An engine writes what a batch must produce (trigger decisions, dead letters) into a Redis hash
per unit (a tenant's shard) in the same MULTI/EXEC as the state and the applied offsets, then sends it and
removes it. Entries still there when a worker takes over a shard were left by a crash somewhere
in sending: the output topics are read from shortly before they were written, and only the ones
not found there are sent. So every record reaches Kafka once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.avro import Codec
from services.common.errors import SchemaError
from services.common.produce import Send
from services.common.tail import topic_partitions

__all__ = ["Outbox", "SentSince", "kafka_sent_since", "pack", "record_id", "unpack"]

log = logging.getLogger(__name__)
SEP = b"\x1f"
# Clock differences between the writer of the outbox and the broker's record timestamps.
MARGIN_MS = 60_000
SentSince = Callable[[Iterable[str], int, set[str]], Awaitable[set[str]]]


def pack(written_ms: int, topic: str, key: str, payload: bytes) -> bytes:
    return SEP.join((str(written_ms).encode(), topic.encode(), key.encode(), payload))


def unpack(entry: bytes) -> tuple[int, str, bytes, bytes]:
    written, topic, key, payload = entry.split(SEP, 3)
    return int(written), topic.decode(), key, payload


def record_id(schema: str, record: dict[str, Any]) -> str | None:
    """The outbox id a record on Kafka carries: a decision's trigger id, an attribution's id (and
    whether it takes one back), a campaign request's id, or a dead letter's source and position (see
    `services.common.deadletter.dead_letter_id`)."""
    if schema == "crm.triggers.Trigger":
        return str(record["trigger_id"])
    if schema == "crm.attribution.Attribution":
        return f"{record['attribution_id']}|retracted" if record["retracted"] else str(record["attribution_id"])
    if schema == "crm.campaigns.Request":
        return str(record["request_id"])
    if schema == "crm.events.DeadLetter":
        return f"dlq|{record['source']}|{record['topic']}|{record['partition']}|{record['offset']}"
    return None


def _ids(values: list[bytes | None], codec: Codec) -> set[str]:
    found = set()
    for value in values:
        try:
            ident = record_id(*codec.decode(value or b""))
        except SchemaError:
            continue
        if ident is not None:
            found.add(ident)
    return found


def kafka_sent_since(bootstrap: str, codec: Codec) -> SentSince:
    """A SentSince that reads `topics` from `since_ms` (less a margin) to their ends and returns
    the ids (`record_id`) of `wanted` found there."""

    async def sent_since(topics: Iterable[str], since_ms: int, wanted: set[str]) -> set[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in sorted(set(topics)) for p in await topic_partitions(bootstrap, t)]
            consumer.assign(tps)
            starts = await consumer.offsets_for_times({tp: max(0, since_ms - MARGIN_MS) for tp in tps})
            ends = await consumer.end_offsets(tps)
            todo = {}
            for tp in tps:
                found = starts.get(tp)
                if found is not None and found.offset < ends[tp]:
                    consumer.seek(tp, found.offset)
                    todo[tp] = ends[tp]
            seen: set[str] = set()
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=1000)
                seen.update(_ids([r.value for records in batch.values() for r in records], codec) & wanted)
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
            return seen
        finally:
            await consumer.stop()

    return sent_since


class Outbox:
    """One engine's outbox: a Redis hash per unit (a tenant's shard), id -> packed record."""

    def __init__(
        self,
        *,
        redis: Any,
        key: Callable[[str, int], str],
        send: Send,
        sent_since: SentSince,
        grace_seconds: float,
        on_recovered: Callable[[int, int], None] = lambda already, now: None,
    ) -> None:
        """`key(tenant, shard)` names a unit's hash; `send` produces one record (returns its
        delivery future); entries younger than `grace_seconds` may belong to a live worker that
        held the shard before a rebalance and is sending them; `on_recovered(already_sent, sent_now)`."""
        self.redis = redis
        self.key = key
        self.send_one = send
        self.sent_since = sent_since
        self.grace_seconds = grace_seconds
        self.on_recovered = on_recovered
        self.recovered: set[tuple[str, int]] = set()  # units whose outbox this worker has checked

    def queue(self, pipe: Any, tenant: str, entries: dict[int, dict[str, bytes]]) -> None:
        """Queue the write of `entries` (shard -> id -> packed) of `tenant` on `pipe`, inside the
        unit's MULTI."""
        for shard, items in entries.items():
            if items:
                pipe.hset(self.key(tenant, shard), mapping=items)

    async def send(self, tenant: str, entries: dict[int, dict[str, bytes]]) -> None:
        """Send `entries` of `tenant` (written by an executed MULTI), wait for Kafka, then clear them."""
        pending = []
        for items in entries.values():
            for entry in items.values():
                _, topic, key, payload = unpack(entry)
                pending.append(await self.send_one(topic, key, payload))
        if not pending:
            return
        await asyncio.gather(*pending)
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, items in entries.items():
                if items:
                    pipe.hdel(self.key(tenant, shard), *items)
            await pipe.execute()

    async def recover(self, units: Iterable[tuple[str, int]]) -> None:
        """Send what a crash left in the outboxes of `units`, except what is already on Kafka."""
        for unit in sorted(set(units) - self.recovered):
            key = self.key(*unit)
            entries = {k.decode(): unpack(v) for k, v in (await self.redis.hgetall(key)).items()}
            cutoff = int((time.time() - self.grace_seconds) * 1000)
            left = {ident: entry for ident, entry in entries.items() if entry[0] <= cutoff}
            if left:
                since = min(entry[0] for entry in left.values())
                found = await self.sent_since({entry[1] for entry in left.values()}, since, set(left))
                pending = []
                for ident, (_, topic, record_key, payload) in left.items():
                    if ident not in found:
                        pending.append(await self.send_one(topic, record_key, payload))
                await asyncio.gather(*pending)
                await self.redis.hdel(key, *left)
                self.on_recovered(len(found), len(left) - len(found))
                log.warning("outbox of tenant %r shard %d: %d already on Kafka, %d sent now", unit[0], unit[1],
                            len(found), len(pending))  # fmt: skip
            if len(left) == len(entries):
                self.recovered.add(unit)
