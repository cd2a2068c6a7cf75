"""The stager as a Faust app: event topics in, customer stages in Redis, transitions out."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis

from services.common.avro import default_codec
from services.common.constants import DEFAULT_PARTITIONS, EVENT_TYPES, TOPIC_REFERRALS, event_topic
from services.stager.config import StageRules
from services.stager.engine import Engine, Message
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings

__all__ = ["SOURCE_TOPICS", "create_app"]

# Profile events carry attributes and consent, which no stage rule reads.
SOURCE_TOPICS: tuple[str, ...] = (*(event_topic(t) for t in EVENT_TYPES if t != "profile"), TOPIC_REFERRALS)


def create_app(settings: StagerSettings, rules: StageRules, registry: CollectorRegistry | None = None) -> faust.App:
    """A Faust app whose agent applies event batches through one Engine."""
    registry = registry if registry is not None else CollectorRegistry()
    app = faust.App(
        settings.stager_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=DEFAULT_PARTITIONS,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_rebalance_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        broker_max_poll_records=settings.batch_max,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        producer_acks=-1,
        web_host=settings.stager_web_host,
        web_port=settings.stager_web_port,
        datadir=str(settings.state_dir / "faust"),
    )
    redis = Redis.from_url(settings.redis_url)
    source = app.topic(*SOURCE_TOPICS, value_serializer="raw", key_serializer="raw")
    metrics = StagerMetrics(registry)

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await app.producer.send(topic, key, value, None, None, None)

    def shards() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic in SOURCE_TOPICS}

    engine = Engine(redis, send, default_codec(), rules, settings, metrics, shards)
    started = False

    async def ready() -> None:
        nonlocal started
        if not started:
            await engine.start()
            started = True

    @app.agent(source)
    async def stage(stream: Any) -> None:  # faust.Stream: take_events is not on StreamT
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_seconds):
            await ready()
            batch = [Message(e.message.topic, e.message.partition, e.message.offset, e.message.value) for e in events]
            await engine.process(batch)

    @app.timer(interval=settings.timer_interval_seconds)  # type: ignore[untyped-decorator]
    async def timers() -> None:
        await ready()
        await engine.tick()

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        ok = bool(await redis.ping())
        return self.json({"status": "ok" if ok else "degraded", "redis": ok}, status=200 if ok else 503)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; Prometheus reads the version alone
        return self.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    app.crm_engine = engine  # type: ignore[attr-defined]
    return app
