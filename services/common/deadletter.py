"""Dead letters of the stream services: what an engine could not apply, with where it was read.

Each dead letter carries its source topic, partition and offset, so an operator can find the
original and the same position is never dead-lettered twice (the id goes through the outbox).
"""

from __future__ import annotations

import time
from typing import Any

from services.common.avro import Codec
from services.common.constants import TOPIC_DLQ
from services.common.fence import OffsetFence
from services.common.messages import Message
from services.common.outbox import Outbox, pack, record_id

__all__ = ["MAX_ORIGINAL_BYTES", "dead_letter", "dead_letter_id", "quarantine"]

# A dead letter must itself fit in a Kafka message (1 MB by default).
MAX_ORIGINAL_BYTES = 512 * 1024


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
    if len(original) > MAX_ORIGINAL_BYTES:
        reason = f"{reason} (original cut from {len(original)} bytes)"
        original = original[:MAX_ORIGINAL_BYTES]
    now = int(time.time() * 1000)
    envelope = {
        "original": original,
        "topic": msg.topic,
        "reason": reason[:1000],
        "received_at": now,
        "source": source,
        "partition": msg.partition,
        "offset": msg.offset,
    }
    ident = dead_letter_id(source, msg)
    value = codec.encode("crm.events.DeadLetter", envelope)
    return ident, pack(now, TOPIC_DLQ, f"{msg.topic}:{msg.partition}", value)


async def quarantine(
    redis: Any, fence: OffsetFence, outbox: Outbox, codec: Codec, source: str, *, msg: Message, reason: str
) -> bool:
    """Dead-letter `msg` and move the fence past it in one MULTI (a message that cannot be
    applied even alone); False if it was applied before. The caller holds its engine's lock."""
    await fence.refresh([msg])
    offsets: dict[str, int] = {}
    if not fence.admit(msg, offsets):
        return False
    ident, entry = dead_letter(codec, source, msg, reason)
    dead = {msg.partition: {ident: entry}}
    async with redis.pipeline(transaction=True) as pipe:
        outbox.queue(pipe, dead)
        fence.queue(pipe, offsets)
        await pipe.execute()
    fence.written(offsets)
    await outbox.send(dead)
    return True
