"""The triggers worker as a Faust app: transitions and events in, decisions on trigger topics."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.avro import default_codec
from services.common.constants import TOPIC_STAGE_TRANSITIONS, event_topic
from services.common.faustapp import add_pages, faust_app, once, to_messages
from services.triggers.config import TriggerConfig
from services.triggers.engine import TriggerEngine
from services.triggers.metrics import TriggerMetrics
from services.triggers.outbox import kafka_sent_since
from services.triggers.settings import TriggerSettings

__all__ = ["SOURCE_TOPICS", "create_app"]

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
    """A Faust app whose agent applies batches through one TriggerEngine; a timer fires timers."""
    registry = registry if registry is not None else CollectorRegistry()
    app = faust_app(
        settings.triggers_group,
        settings.kafka_bootstrap,
        settings.triggers_web_host,
        settings.triggers_web_port,
        settings.batch_max,
        settings.state_dir / "faust-triggers",
    )
    redis = Redis.from_url(settings.redis_url)
    codec = default_codec()
    metrics = TriggerMetrics(registry)

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await app.producer.send(topic, key, value, None, None, None)

    def shards() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic in SOURCE_TOPICS}

    engine = TriggerEngine(
        redis, send, codec, config, settings, metrics, kafka_sent_since(settings.kafka_bootstrap, codec), shards
    )
    ready = once(engine.start)

    source = app.topic(*SOURCE_TOPICS, value_serializer="raw", key_serializer="raw")

    @app.agent(source, name="decide")
    async def decide(stream: Any) -> None:
        # Events are acknowledged (and their offsets committed) only after the batch is applied.
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_seconds):
            await ready()
            await engine.process(to_messages(events))

    @app.timer(interval=settings.timer_interval_seconds)  # type: ignore[untyped-decorator]
    async def timers() -> None:
        await ready()
        await engine.tick()

    add_pages(app, redis, registry)
    app.crm_engine = engine  # type: ignore[attr-defined]
    return app
