"""The triggers worker as a Faust app: transitions and events in, decisions on trigger topics.

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
from services.common.constants import TOPIC_STAGE_TRANSITIONS, event_topic
from services.common.faustapp import add_pages, engine_consumer, faust_app, guarded, once
from services.common.outbox import kafka_sent_since
from services.common.produce import engine_producer
from services.common.resilience import Health
from services.triggers.config import TriggerConfig
from services.triggers.engine import TriggerEngine
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings

__all__ = ["SOURCE_TOPICS", "create_app"]


class _Clients:
    producer: Any = None
    consumer: Any = None
    started = False  # the producer is started: timers may send


# All keyed by customer with the same partition count, so partition p of each holds the same
# customers and one worker owns a customer's timers, transitions and events together.
SOURCE_TOPICS: tuple[str, ...] = (
    TOPIC_STAGE_TRANSITIONS,
    event_topic("order"),
    event_topic("cart"),
    event_topic("profile"),
)


def create_app(
    settings: TriggerSettings, config: TriggerConfig, registry: CollectorRegistry | None = None
) -> faust.App:
    """A Faust app whose task feeds batches to one TriggerEngine and whose timer fires its timers."""
    registry = registry if registry is not None else CollectorRegistry()
    app = faust_app(
        settings.triggers_group,
        settings.kafka_bootstrap,
        settings.triggers_web_host,
        settings.triggers_web_port,
        settings.batch_max,
        settings.state_dir / "faust-triggers",
    )
    redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    codec = default_codec()
    metrics = TriggerMetrics(registry)
    health = Health("triggers")
    kafka = _Clients()  # made inside Faust's event loop, which aiokafka needs

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await kafka.producer.send(topic, value, key=key)

    def shards() -> set[int]:
        if kafka.consumer is None:
            return set()
        return {tp.partition for tp in kafka.consumer.assignment() if tp.topic in SOURCE_TOPICS}

    engine = TriggerEngine(redis=redis, send=send, codec=codec, config=config, settings=settings, metrics=metrics,
                           sent_since=kafka_sent_since(settings.kafka_bootstrap, codec), shards=shards)  # fmt: skip
    ready = once(engine.start)

    @app.task  # type: ignore[untyped-decorator]
    async def consume() -> None:
        kafka.producer = engine_producer(settings.kafka_bootstrap)
        kafka.consumer = engine_consumer(settings.kafka_bootstrap, f"{settings.triggers_group}-inputs")
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
