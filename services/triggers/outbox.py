"""Which decided triggers already reached Kafka: the check that makes a crash during sending
produce no duplicate.

Decisions are written to a Redis outbox in the same transaction as the state that made them,
then sent, then removed from the outbox. Entries still there when a worker takes over a shard
were left by a crash somewhere in sending; the output topics are read from shortly before they
were written, and only the ones not found there are sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.avro import Codec
from services.common.tail import topic_partitions

__all__ = ["SentSince", "kafka_sent_since", "pack", "unpack"]

SEP = b"\x1f"
# Clock differences between the writer of the outbox and the broker's record timestamps.
MARGIN_MS = 60_000
SentSince = Callable[[Iterable[str], int, set[str]], Awaitable[set[str]]]


def pack(written_ms: int, topic: str, key: str, payload: bytes) -> bytes:
    return SEP.join((str(written_ms).encode(), topic.encode(), key.encode(), payload))


def unpack(entry: bytes) -> tuple[int, str, bytes, bytes]:
    written, topic, key, payload = entry.split(SEP, 3)
    return int(written), topic.decode(), key, payload


def kafka_sent_since(bootstrap: str, codec: Codec) -> SentSince:
    """A SentSince that reads `topics` from `since_ms` (less a margin) to their ends and returns
    the trigger ids of `wanted` found there."""

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
                for records in batch.values():
                    for record in records:
                        trigger_id = codec.decode(record.value)[1]["trigger_id"]
                        if trigger_id in wanted:
                            seen.add(trigger_id)
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
            return seen
        finally:
            await consumer.stop()

    return sent_since
