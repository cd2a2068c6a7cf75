"""Dead letters of the stream services: what an engine could not apply, with where it was read.

Each dead letter carries its source topic, partition and offset, so an operator can find the
original and the same position is never dead-lettered twice (the id goes through the outbox).
"""

from __future__ import annotations

import time
from typing import Any

from services.common.avro import Codec
from services.common.constants import TOPIC_DLQ
from services.common.fence import FLOOR, OffsetFence
from services.common.messages import Message
from services.common.outbox import Outbox, pack, record_id

__all__ = [
    "MAX_ORIGINAL_BYTES",
    "MAX_REASON_CHARS",
    "dead_letter",
    "dead_letter_id",
    "encode_dead_letter",
    "printable",
    "quarantine",
]

# A dead letter must itself fit in a Kafka message (1 MB by default).
MAX_ORIGINAL_BYTES = 512 * 1024
MAX_REASON_CHARS = 1000


def printable(text: str) -> str:
    """`text` with what UTF-8 cannot carry (lone surrogates) written as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encode_dead_letter(
    codec: Codec,
    *,
    original: bytes,
    topic: str,
    reason: str,
    received_at: int,
    source: str,
    partition: int = -1,
    offset: int = -1,
    keep: int = MAX_ORIGINAL_BYTES,
) -> bytes:
    """The Avro `crm.events.DeadLetter` record of `original` (what ingest refused, or what an engine
    read at `topic`/`partition`/`offset` and could not apply). It always fits in a Kafka message:
    the original is cut to its first `keep` bytes (the reason says so), the reason and the source
    to 1,000 characters, and text UTF-8 cannot carry is escaped."""
    note = ""
    if len(original) > keep:
        note = f" (original cut to its first {keep} of {len(original)} bytes)"
        original = original[:keep]
    envelope = {
        "original": original,
        "topic": topic,
        "reason": printable(reason)[: MAX_REASON_CHARS - len(note)] + note,
        "received_at": received_at,
        "source": printable(source)[:MAX_REASON_CHARS],
        "partition": partition,
        "offset": offset,
    }
    return codec.encode("crm.events.DeadLetter", envelope)


def dead_letter_id(source: str, msg: Message) -> str:
    """The outbox id of `msg`'s dead letter written by `source`."""
    where = {"source": source, "topic": msg.topic, "partition": msg.partition, "offset": msg.offset}
    found = record_id("crm.events.DeadLetter", where)
    assert found is not None
    return found


def dead_letter(codec: Codec, source: str, msg: Message, reason: str) -> tuple[str, bytes]:
    """(outbox id, packed outbox entry) of the dead letter of `msg`; a null value is kept as empty
    bytes, an original too large for a Kafka message is cut (and the reason says so)."""
    original = msg.value if isinstance(msg.value, bytes) else b""
    now = int(time.time() * 1000)
    value = encode_dead_letter(
        codec,
        original=original,
        topic=msg.topic,
        reason=reason,
        received_at=now,
        source=source,
        partition=msg.partition,
        offset=msg.offset,
    )
    ident = dead_letter_id(source, msg)
    return ident, pack(now, TOPIC_DLQ, f"{msg.topic}:{msg.partition}", value)


async def quarantine(
    redis: Any, fence: OffsetFence, outbox: Outbox, codec: Codec, source: str, *, msg: Message, reason: str
) -> bool:
    """Dead-letter `msg` and move its shard's floor past it in one MULTI (a message that cannot be
    applied even alone; every earlier one of its partition is applied by then); False if it was
    applied before. The caller holds its engine's lock."""
    unit = (FLOOR, msg.partition)
    await fence.refresh([unit])
    tp = f"{msg.topic}:{msg.partition}"
    if fence.done(unit, tp, msg.offset):
        return False
    offsets = {tp: msg.offset + 1}
    ident, entry = dead_letter(codec, source, msg, reason)
    dead = {msg.partition: {ident: entry}}
    async with redis.pipeline(transaction=True) as pipe:
        outbox.queue(pipe, FLOOR, dead)
        fence.queue(pipe, unit, offsets)
        await pipe.execute()
    fence.written(unit, offsets)
    await outbox.send(FLOOR, dead)
    return True
