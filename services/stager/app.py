"""The stager as a Faust app: event topics in, customer stages in Redis, transitions out.

The input topics are read by the shared batch loop (`services.common.batchloop`: aiokafka
`getmany` batches, positions from the applied-offset fence); Faust runs the timers and the
health and metrics pages.
"""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.avro import default_codec
from services.common.batchloop import BatchLoop
from services.common.constants import EVENT_TYPES, TOPIC_REFERRALS, event_topic
from services.common.faustapp import add_pages, engine_consumer, faust_app, guarded, once
from services.common.produce import engine_producer
from services.common.produce import send_many as produce_many
from services.common.resilience import Health
from services.stager.config import StageRules
from services.stager.engine import Engine
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings

__all__ = ["SOURCE_TOPICS", "create_app"]


class _Clients:
    producer: Any = None
    consumer: Any = None
    started = False  # the producer is started: timers may send


# Profile events carry attributes and consent, which no stage rule reads.
EVENT_SOURCE_TOPICS: tuple[str, ...] = tuple(event_topic(t) for t in EVENT_TYPES if t != "profile")
SOURCE_TOPICS: tuple[str, ...] = (*EVENT_SOURCE_TOPICS, TOPIC_REFERRALS)


def create_app(settings: StagerSettings, rules: StageRules, registry: CollectorRegistry | None = None) -> faust.App:
    """A Faust app whose task feeds event batches to one Engine and whose timer fires its timers."""
    registry = registry if registry is not None else CollectorRegistry()
    app = faust_app(
        settings.stager_group,
        settings.kafka_bootstrap,
        settings.stager_web_host,
        settings.stager_web_port,
        settings.batch_max,
        settings.state_dir / "faust",
    )
    redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    metrics = StagerMetrics(registry)
    health = Health("stager")
    kafka = _Clients()  # made inside Faust's event loop, which aiokafka needs

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await kafka.producer.send(topic, value, key=key)

    async def send_many(topic: str, items: list[tuple[bytes, bytes]]) -> None:
        await produce_many(kafka.producer, topic, items)

    async def send_to(topic: str, partition: int, value: bytes) -> Any:
        return await kafka.producer.send(topic, value, partition=partition)

    def shards() -> set[int]:
        if kafka.consumer is None:
            return set()
        return {tp.partition for tp in kafka.consumer.assignment() if tp.topic in EVENT_SOURCE_TOPICS}

    engine = Engine(redis=redis, send=send, codec=default_codec(), rules=rules, settings=settings, metrics=metrics,
                    shards=shards, send_many=send_many, send_to=send_to)  # fmt: skip
    ready = once(engine.start)

    @app.task  # type: ignore[untyped-decorator]
    async def consume() -> None:
        kafka.producer = engine_producer(settings.kafka_bootstrap)
        kafka.consumer = engine_consumer(settings.kafka_bootstrap, f"{settings.stager_group}-events")
        await guarded(kafka.producer.start, health)
        kafka.started = True
        loop = BatchLoop(
            consumer=kafka.consumer,
            engine=engine,
            topics=SOURCE_TOPICS,
            health=health,
            ready=ready,
            batch_max=settings.batch_max,
            within_seconds=settings.batch_within_seconds,
        )
        try:
            await loop.run()
        finally:
            await kafka.producer.stop()

    @app.timer(interval=settings.timer_interval_seconds)  # type: ignore[untyped-decorator]
    async def timers() -> None:
        async def tick() -> None:
            if kafka.started:
                await ready()
                await engine.tick()

        await guarded(tick, health, once_only=True)

    add_pages(app, redis, registry, health, lambda: kafka.producer)
    app.crm_engine = engine  # type: ignore[attr-defined]
    return app
