"""Positions live with the state: failures injected in the middle of batches (Redis gone before
EXEC, Redis reply lost after EXEC, Kafka refusing a send, a message the rules choke on) leave
every message applied exactly once, the poison one dead-lettered once, and Kafka's committed
offsets never ahead of the applied-offset fence. For the stager and the triggers, each through
the shared batch loop against the real broker and Redis."""

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import keys
from services.common.avro import default_codec
from services.common.batchloop import BatchLoop
from services.common.constants import TOPIC_DLQ
from services.common.faustapp import engine_consumer, once
from services.common.messages import Message
from services.common.outbox import kafka_sent_since
from services.common.produce import engine_producer
from services.common.produce import send_many as produce_many
from services.common.resilience import Health
from services.common.tail import read_topic
from services.stager import rules as stager_rules
from services.stager.config import StageRules
from services.stager.engine import Engine
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings
from services.stager.statecodec import decode_state
from services.triggers import domain as triggers_domain
from services.triggers.config import TriggerConfig
from services.triggers.engine import TriggerEngine
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings
from services.triggers.state import decode_state as decode_trigger_state
from tests.conftest import StackInfo
from tests.integration.lookup import floors, state_of

DAY = 86_400_000
T0 = 1_600_000_000_000
CUSTOMERS = 60
ORDERS = 3  # paid orders per customer


class FlakyRedis:
    """Redis whose MULTI/EXEC number n fails as planned: "before" (nothing written) or "after"
    (written, but the reply is lost)."""

    def __init__(self, real: Redis, plan: Mapping[int, str]) -> None:
        self.real, self.plan, self.calls = real, plan, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def pipeline(self, transaction: bool = True) -> Any:
        pipe: Any = self.real.pipeline(transaction=transaction)
        if not transaction:
            return pipe
        execute = pipe.execute

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            mode = self.plan.get(self.calls)
            if mode == "before":
                raise RedisConnectionError("injected: connection lost before EXEC")
            result = await execute(*args, **kwargs)
            if mode == "after":
                raise RedisConnectionError("injected: reply lost after EXEC")
            return result

        pipe.execute = flaky
        return pipe


async def _topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, tenant: str, poison: str) -> dict[TopicPartition, int]:
    """ORDERS paid orders per customer, each order `created` first; returns the end offsets."""
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        for n in range(ORDERS):
            for c in range(CUSTOMERS):
                customer = f"c{c}"
                for status, at in (("created", T0 + n * 10 * DAY + c), ("paid", T0 + n * 10 * DAY + c + 60_000)):
                    record = {"event_id": f"{tenant}-{c}-{n}-{status}", "customer_id": customer, "tenant": tenant,
                              "event_time": at, "order_id": f"{c}-{n}", "status": status, "amount": 20.0}  # fmt: skip
                    if record["event_id"] == poison:
                        record["order_id"] = "poison"
                    meta = await producer.send_and_wait(
                        topic, codec.encode("crm.events.Order", record), key=customer.encode()
                    )
                    ends[TopicPartition(topic, meta.partition)] = meta.offset + 1
    finally:
        await producer.stop()
    return ends


async def _run(loop: BatchLoop, engine: Any, ends: Mapping[TopicPartition, int], consumer: Any, redis: Redis) -> None:
    """Step the loop until the fence holds every end offset; checks every commit on the way."""
    commit = consumer.commit

    async def checked(offsets: Mapping[TopicPartition, int]) -> None:
        fence = await floors(redis, engine.group)
        for tp, offset in offsets.items():
            assert offset <= fence.get(f"{tp.topic}:{tp.partition}", 0), "commit ahead of the applied state"
        await commit(offsets)

    consumer.commit = checked
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        await loop.step()
        fence = await floors(redis, engine.group)
        if all(fence.get(f"{tp.topic}:{tp.partition}", 0) >= end for tp, end in ends.items()):
            await asyncio.sleep(0.05)
            await loop.step()  # nothing more comes: what Kafka says now is that every partition is read
            await engine.tick()  # the input is read to its end: the clock moves to its last event
            return
    raise AssertionError("the loop did not apply every message")


async def _dead(bootstrap: str, source: str) -> list[dict[str, Any]]:
    return [
        r async for r in read_topic(bootstrap, TOPIC_DLQ, default_codec(), idle_timeout=1.0) if r["source"] == source
    ]


def _choke_on(module: Any, name: str, poison: str) -> Callable[..., Any]:
    """Make `module.name` (a rules function) raise for the input with event id `poison`."""
    real = getattr(module, name)

    def choking(state: Any, item: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(item, "event_id", None) == poison:
            raise RuntimeError("the rules choke on this one")
        return real(state, item, *args, **kwargs)

    return choking


@pytest.mark.timeout(300)
async def test_stager_failures_mid_batch_apply_every_message_exactly_once(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, tenant, group = f"test.orders.{run}", f"flaky-{run}", f"stager-flaky-{run}"
    poison = f"{tenant}-7-1-paid"
    await _topic(stack.kafka_bootstrap, topic)
    ends = await _produce(stack.kafka_bootstrap, topic, tenant, poison)
    monkeypatch.setattr(stager_rules, "apply_fact", _choke_on(stager_rules, "apply_fact", poison))

    settings = StagerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=stack.redis_url,
        stager_group=group,
        outbox_grace_seconds=0,
        batch_max=50,
        idle_flush_seconds=0.01,
    )
    real = Redis.from_url(stack.redis_url)
    redis: Any = FlakyRedis(real, {2: "before", 4: "after", 7: "before"})
    producer = engine_producer(stack.kafka_bootstrap)
    await producer.start()
    sends = 0

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    async def send_many(topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        nonlocal sends
        sends += 1
        if sends == 5:
            raise KafkaConnectionError("injected: broker gone while sending transitions")
        await produce_many(producer, topic, items)

    metrics = StagerMetrics(CollectorRegistry())
    engine = Engine(redis=redis, send=send, codec=default_codec(), rules=StageRules(), settings=settings,
                    metrics=metrics, send_many=send_many)  # fmt: skip
    consumer = engine_consumer(stack.kafka_bootstrap, group)
    loop = BatchLoop(consumer=consumer, engine=engine, topics=[topic], health=Health("stager"),
                     ready=once(engine.start), batch_max=50, within_seconds=0.2)  # fmt: skip
    loop.backoff.first = loop.backoff.delay = 0.01
    consumer.subscribe([topic])
    await consumer.start()
    try:
        await _run(loop, engine, ends, consumer, real)
        # a message that fails even alone is quarantined once: dead-lettered, the fence moved past it
        stuck = Message(topic, 0, ends[TopicPartition(topic, 0)], b"never applied")
        await engine.quarantine(stuck, "unprocessable: fails alone")
        await engine.quarantine(stuck, "unprocessable: fails alone")  # again: already behind the fence
        assert engine.fence.applied[f"{topic}:0"] == stuck.offset + 1
    finally:
        await consumer.stop()
        await producer.stop()

    assert redis.calls > 7 and sends > 5  # every injected failure happened
    paid: dict[int, int] = {}
    for c in range(CUSTOMERS):
        state, _ = decode_state(cast(bytes, await state_of(real, keys.customer_key, tenant, f"c{c}")))
        paid[c] = state.paid
    assert paid == {c: ORDERS - (c == 7) for c in range(CUSTOMERS)}  # the poison order alone is missing
    assert metrics.repeats._value.get() == 0  # nothing was applied twice (the fence kept it out)
    await real.aclose()
    dead = await _dead(stack.kafka_bootstrap, f"stager:{group}")
    assert sorted(r["reason"] for r in dead) == ["unprocessable: RuntimeError: the rules choke on this one",
                                                 "unprocessable: fails alone"]  # fmt: skip
    assert all(r["topic"] == topic for r in dead)


@pytest.mark.timeout(300)
async def test_triggers_failures_mid_batch_apply_every_message_exactly_once(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, tenant, group = f"test.orders.{run}", f"flaky-{run}", f"triggers-flaky-{run}"
    poison = f"{tenant}-11-2-paid"
    await _topic(stack.kafka_bootstrap, topic)
    ends = await _produce(stack.kafka_bootstrap, topic, tenant, poison)
    monkeypatch.setattr(triggers_domain, "apply", _choke_on(triggers_domain, "apply", poison))

    settings = TriggerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                               triggers_group=group, batch_max=50, outbox_grace_seconds=0,
                               idle_flush_seconds=0.01, triggers_follow_stager=False)  # fmt: skip
    real = Redis.from_url(stack.redis_url)
    redis: Any = FlakyRedis(real, {2: "before", 4: "after", 7: "before"})
    producer = engine_producer(stack.kafka_bootstrap)
    await producer.start()

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    codec = default_codec()
    metrics = TriggerMetrics(CollectorRegistry())
    engine = TriggerEngine(redis=redis, send=send, codec=codec, config=TriggerConfig(), settings=settings,
                           metrics=metrics, sent_since=kafka_sent_since(stack.kafka_bootstrap, codec))  # fmt: skip
    consumer = engine_consumer(stack.kafka_bootstrap, group)
    loop = BatchLoop(consumer=consumer, engine=engine, topics=[topic], health=Health("triggers"),
                     ready=once(engine.start), batch_max=50, within_seconds=0.2)  # fmt: skip
    loop.backoff.first = loop.backoff.delay = 0.01
    consumer.subscribe([topic])
    await consumer.start()
    try:
        await _run(loop, engine, ends, consumer, real)
    finally:
        await consumer.stop()
        await producer.stop()

    assert redis.calls > 7
    paid: dict[int, int] = {}
    for c in range(CUSTOMERS):
        state = decode_trigger_state(cast(bytes, await state_of(real, keys.trigger_state_key, tenant, f"c{c}")))
        paid[c] = state.paid_count
    await real.aclose()
    assert paid == {c: ORDERS - (c == 11) for c in range(CUSTOMERS)}
    assert metrics.repeats._value.get() == 0
    dead = await _dead(stack.kafka_bootstrap, f"triggers:{group}")
    assert len(dead) == 1 and dead[0]["topic"] == topic and dead[0]["reason"].startswith("unprocessable")
