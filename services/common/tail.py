"""Read a topic and decode every message with the Avro contract (used by `crm tail` and tests)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.avro import Codec
from services.common.errors import SchemaError

__all__ = ["read_topic", "to_json", "topic_partitions"]


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """Partition numbers of `topic` (empty if it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if not t.get("error_code") for p in t["partitions"])


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_json(record: dict[str, Any]) -> str:
    """One JSON line for a decoded record (times as ISO 8601, bytes as text or base64)."""
    return json.dumps(_plain(record), ensure_ascii=False, sort_keys=False)


async def read_topic(
    bootstrap: str, topic: str, codec: Codec, max_messages: int | None = None, idle_timeout: float = 2.0
) -> AsyncIterator[dict[str, Any]]:
    """Decoded messages of `topic` from the beginning up to its current end (or `max_messages`).

    Each item carries the record plus `_partition`, `_offset` and `_key`; a message that does not
    decode yields `{"_error": reason}` instead, so nothing is hidden.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await consumer.start()  # a broker that is away fails here: the consumer is closed all the same
        partitions = await topic_partitions(bootstrap, topic)
        if not partitions:
            raise SchemaError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        seen = 0
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=int(idle_timeout * 1000))
            if not batch:
                break
            for tp, messages in batch.items():
                for msg in messages:
                    try:
                        _, record = codec.decode(msg.value or b"")
                    except SchemaError as exc:
                        record = {"_error": str(exc)}
                    record["_partition"] = msg.partition
                    record["_offset"] = msg.offset
                    record["_key"] = msg.key.decode(errors="replace") if msg.key else None
                    yield record
                    seen += 1
                    if max_messages is not None and seen >= max_messages:
                        return
                    if msg.offset + 1 >= remaining.get(tp, 0):
                        remaining.pop(tp, None)
    finally:
        await consumer.stop()
