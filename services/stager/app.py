"""The stager as a Faust app: event topics in, customer stages in Redis, transitions out."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.avro import default_codec
from services.common.constants import EVENT_TYPES, TOPIC_REFERRALS, event_topic
from services.common.faustapp import add_pages, faust_app, once, to_messages
from services.common.produce import send_many as produce_many
from services.stager.config import StageRules
from services.stager.engine import Engine, Message
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings

__all__ = ["SOURCE_TOPICS", "create_app"]

# Profile events carry attributes and consent, which no stage rule reads.
EVENT_SOURCE_TOPICS: tuple[str, ...] = tuple(event_topic(t) for t in EVENT_TYPES if t != "profile")
SOURCE_TOPICS: tuple[str, ...] = (*EVENT_SOURCE_TOPICS, TOPIC_REFERRALS)


def create_app(settings: StagerSettings, rules: StageRules, registry: CollectorRegistry | None = None) -> faust.App:
    """A Faust app whose agent applies event batches through one Engine."""
    registry = registry if registry is not None else CollectorRegistry()
    app = faust_app(
        settings.stager_group,
        settings.kafka_bootstrap,
        settings.stager_web_host,
        settings.stager_web_port,
        settings.batch_max,
        settings.state_dir / "faust",
    )
    redis = Redis.from_url(settings.redis_url)
    source = app.topic(*SOURCE_TOPICS, value_serializer="raw", key_serializer="raw")
    metrics = StagerMetrics(registry)

    direct: dict[str, Any] = {}  # the direct driver's consumer and producer, once started

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        if "producer" in direct:
            return await direct["producer"].send(topic, value, key=key)
        return await app.producer.send(topic, key, value, None, None, None)

    async def send_many(topic: str, items: list[tuple[bytes, bytes]]) -> None:
        if "producer" in direct:
            await produce_many(direct["producer"], topic, items)
            return
        await asyncio.gather(*[await send(topic, key, value) for key, value in items])

    def shards() -> set[int]:
        consumer = direct.get("consumer") or app.consumer
        return {tp.partition for tp in consumer.assignment() if tp.topic in EVENT_SOURCE_TOPICS}

    engine = Engine(redis, send, default_codec(), rules, settings, metrics, shards, send_many)
    ready = once(engine.start)

    _add_consumer(app, source, settings, engine, ready, direct)

    @app.timer(interval=settings.timer_interval_seconds)  # type: ignore[untyped-decorator]
    async def timers() -> None:
        await ready()
        await engine.tick()

    add_pages(app, redis, registry)
    app.crm_engine = engine  # type: ignore[attr-defined]
    return app


def _add_consumer(
    app: faust.App, source: Any, settings: StagerSettings, engine: Engine, ready: Any, direct: dict[str, Any]
) -> None:
    async def take(stream: Any) -> None:  # faust.Stream: take_events is not on StreamT
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_seconds):
            await ready()
            await engine.process(to_messages(events))

    if settings.stager_driver == "faust":
        app.agent(source, name="stage")(take)
        return
    # The event topics take the direct path; the (quiet) referral topic stays with a Faust agent.
    app.agent(app.topic(TOPIC_REFERRALS, value_serializer="raw", key_serializer="raw"), name="referrals")(take)

    @app.task  # type: ignore[untyped-decorator]
    async def consume() -> None:
        await run_direct(settings, engine, ready, direct)


class _WaitForBatch(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions are handed over only between batches (the engine's lock is free)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.engine.lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


async def run_direct(settings: StagerSettings, engine: Engine, ready: Any, holder: dict[str, Any]) -> None:
    """The hot path without Faust's per-event stream: getmany batches straight into the engine.
    Offsets are committed after each applied batch; the engine's applied-offset fence makes a
    batch redelivered after a crash a no-op."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        # Faust's own consumer (referrals) holds the group name with its own assignor protocol.
        group_id=f"{settings.stager_group}-events",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
    )
    consumer.subscribe(list(EVENT_SOURCE_TOPICS), listener=_WaitForBatch(engine))
    await producer.start()
    await consumer.start()
    holder.update(consumer=consumer, producer=producer)
    try:
        while True:
            batch = await consumer.getmany(
                timeout_ms=int(settings.batch_within_seconds * 1000), max_records=settings.batch_max
            )
            messages = [Message(m.topic, m.partition, m.offset, m.value) for records in batch.values() for m in records]
            if messages:
                await ready()
                await engine.process(messages)
                await consumer.commit()
    finally:
        holder.clear()
        await consumer.stop()
        await producer.stop()
