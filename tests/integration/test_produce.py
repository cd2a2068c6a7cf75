"""`send_many` puts every message where `send` would (same partition for the same key), and all
of them arrive."""

import uuid

from aiokafka import AIOKafkaProducer

from services.common.avro import default_codec
from services.common.constants import TOPIC_DLQ
from services.common.produce import send_many
from services.common.tail import read_topic
from tests.conftest import StackInfo


async def test_send_many_partitions_like_send_and_delivers_everything(stack: StackInfo) -> None:
    codec = default_codec()
    run = uuid.uuid4().hex[:8]

    def letter(i: int, how: str) -> bytes:
        envelope = {"original": b"x" * 2000, "topic": "", "reason": f"{run}:{how}:{i}", "received_at": 0}
        return codec.encode("crm.events.DeadLetter", envelope)

    keys = [f"customer-{i}".encode() for i in range(3000)]  # enough to fill several batches per partition
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await send_many(producer, TOPIC_DLQ, [(k, letter(i, "many")) for i, k in enumerate(keys)])
        for i, k in enumerate(keys):
            await producer.send(TOPIC_DLQ, letter(i, "one"), key=k)
        await producer.flush()
    finally:
        await producer.stop()
    where: dict[tuple[str, str], int] = {}
    async for record in read_topic(stack.kafka_bootstrap, TOPIC_DLQ, codec, idle_timeout=1.0):
        reason = record.get("reason", "")
        if reason.startswith(run):
            _, how, i = reason.split(":")
            where[(how, i)] = record["_partition"]
    assert len(where) == 2 * len(keys)
    assert all(where[("many", str(i))] == where[("one", str(i))] for i in range(len(keys)))
    assert len(set(where.values())) == 12
