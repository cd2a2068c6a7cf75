"""Producing many messages at once: one record batch per partition instead of one `send` each.

aiokafka's `send` does a few microseconds of Python work per message (partitioning, the
accumulator, a future); `send_batch` does it once per batch. The partition is chosen by the
producer's own partitioner (murmur2 of the key, as the Java client and `send` do), so a
message goes to the same partition either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

__all__ = ["Send", "SendMany", "SendTo", "engine_producer", "make_producer", "send_many"]

# send(topic, key, value): hands one record to the producer; awaiting the result waits for Kafka
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
# send_many(topic, [(key, value)]): produces every record and waits for the acknowledgements
SendMany = Callable[[str, list[tuple[bytes, bytes]]], Awaitable[None]]
# send_to(topic, partition, value): one record to a given partition
SendTo = Callable[[str, int, bytes], Awaitable[Awaitable[Any]]]


def make_producer(
    bootstrap: str, *, ack_timeout_seconds: float | None = None, max_request_size: int | None = None
) -> AIOKafkaProducer:
    """The one producer configuration: every record acknowledged by all in-sync replicas
    (`acks=all`), batched (5 ms linger, 512 KiB batches).

    Without `ack_timeout_seconds` (the stream workers) it is idempotent: a retry after a lost
    acknowledgement writes nothing twice, and a record is retried until the broker takes it.
    With it (ingest, which must answer its caller in bounded time) it is not: aiokafka never
    expires a batch of an idempotent producer, so a record left unacknowledged at a caller's
    deadline could still be written minutes later. Without idempotence a batch fails once
    `request_timeout_ms` has passed since it was made (checked after each failed attempt, and an
    attempt itself is bounded by the same timeout), so every record is settled within about
    twice that. A retry may then write a record twice; the engines drop the repeat by event id.
    """
    options: dict[str, Any] = {"linger_ms": 5, "max_batch_size": 512 * 1024}
    if max_request_size is not None:
        options["max_request_size"] = max_request_size
    if ack_timeout_seconds is None:
        return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options)
    request_timeout_ms = max(500, int(ack_timeout_seconds * 1000 / 3))
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                            request_timeout_ms=request_timeout_ms, retry_backoff_ms=100, **options)  # fmt: skip


def engine_producer(bootstrap: str) -> AIOKafkaProducer:
    """The producer of a stream worker (idempotent, see `make_producer`)."""
    return make_producer(bootstrap)


async def send_many(producer: AIOKafkaProducer, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
    """Produce every (key, value) of `items` to `topic` and wait until all are acknowledged."""
    if not items:
        return
    await producer.partitions_for(topic)  # metadata for the partitioner
    choose: Any = producer._partition  # the partitioner `send` uses, with the same arguments
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in items:
        by_partition.setdefault(choose(topic, None, None, None, key, None), []).append((key, value))
    futures = []
    for partition, messages in by_partition.items():
        batch = producer.create_batch()
        for key, value in messages:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)
