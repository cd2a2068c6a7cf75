"""What every Faust worker of the engine shares: the app's settings, and the health and
metrics pages."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.common import keys
from services.common.batchloop import BatchLoop
from services.common.constants import DEFAULT_PARTITIONS
from services.common.errors import ConfigError
from services.common.messages import Message
from services.common.produce import engine_producer
from services.common.produce import send_many as produce_many
from services.common.redisbatch import connect
from services.common.resilience import OUTAGES, Health, dependency_of, retry
from services.common.settings import StreamSettings, load_settings
from services.common.topics import ensure_topics

__all__ = [
    "ASSIGNORS",
    "KafkaClients",
    "add_pages",
    "consumer_group",
    "engine_app",
    "engine_consumer",
    "faust_app",
    "guarded",
    "old_layout",
    "once",
    "run_worker",
    "serve_engine",
    "start_worker",
    "to_messages",
    "worker_main",
]

log = logging.getLogger(__name__)
T = TypeVar("T", bound=StreamSettings)


class _WorkerBoot(BootStrategy):
    """Faust runs the worker, the timers and the web pages; Kafka is read and written by the
    shared batch loop's own clients, whose positions come from the applied-offset fence."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class _WorkerApp(faust.App):
    BootStrategy = _WorkerBoot


def faust_app(
    group: str, kafka_bootstrap: str, web_host: str, web_port: int, batch_max: int, datadir: Path
) -> faust.App:
    """A Faust app for a stream worker: Faust's own Kafka clients stay off (the batch loop has
    its own), tables in memory (Redis is the state store)."""
    return _WorkerApp(
        group,
        broker=f"kafka://{kafka_bootstrap}",
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
        broker_max_poll_records=batch_max,
        stream_buffer_maxsize=max(4096, batch_max * 2),
        producer_acks=-1,
        web_host=web_host,
        web_port=web_port,
        datadir=str(datadir),
    )


def to_messages(events: Any) -> list[Message]:
    """Faust events (from `stream.take_events`) as the engines' messages."""
    return [
        Message(
            e.message.topic,
            e.message.partition,
            e.message.offset,
            e.message.value,
            int((e.message.timestamp or 0) * 1000),
        )
        for e in events
    ]


# Partition p of every input topic must go to one worker: a customer's events, transitions and
# decisions all sit on partition p of their topics, and one worker applies them together. The
# range assignor lays every topic's partitions over the same sorted members (the topics have one
# partition count), so it gives p of each topic to the same worker for any number of workers;
# aiokafka's default (round robin over all topic partitions) does so only when the worker count
# divides the partition count.
ASSIGNORS = (RangePartitionAssignor,)


def engine_consumer(kafka_bootstrap: str, group: str) -> AIOKafkaConsumer:
    """The consumer of a stream worker's batch loop: no auto-commit (positions come from the
    applied-offset fence), earliest offsets for a new group, co-partitioned assignment."""
    return AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        partition_assignment_strategy=ASSIGNORS,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


async def guarded(call: Callable[[], Awaitable[None]], health: Health, once_only: bool = False) -> None:
    """Run `call` without ever letting it stop the worker: outages are waited out (retried until
    they pass, or with `once_only` noted and left to the next run); any other error is logged."""
    try:
        if not once_only:
            await retry(call, health)
            return
        await call()
    except OUTAGES as exc:
        health.down(dependency_of(exc), exc)
        return
    except Exception:  # noqa: BLE001 - a timer must not end the worker; the next run tries again
        log.exception("timer run failed")
        return
    for dependency in list(health.down_since):  # the live probes of /healthz still ask Kafka itself
        health.up(dependency)


class _KafkaProbe:
    """Whether a broker answers a metadata request, asked at most once a second."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer | None]) -> None:
        self.producer = producer
        self.checked = 0.0
        self.ok = True

    async def __call__(self) -> bool:
        producer = self.producer()
        if producer is None or time.monotonic() - self.checked < 1.0:
            return self.ok
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
            self.ok = True
        except Exception:  # noqa: BLE001 - any failure to answer means not healthy
            self.ok = False
        self.checked = time.monotonic()
        return self.ok


def add_pages(
    app: faust.App,
    redis: Any,
    registry: CollectorRegistry,
    health: Health | None = None,
    producer: Callable[[], AIOKafkaProducer | None] = lambda: None,
) -> None:
    """`/healthz` (200 while Redis and Kafka answer and the worker waits out no outage, else
    503) and `/metrics` (Prometheus text)."""
    kafka = _KafkaProbe(producer)

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        try:
            redis_ok = bool(await asyncio.wait_for(redis.ping(), 2.0))
        except Exception:  # noqa: BLE001 - any failure to answer means not healthy
            redis_ok = False
        kafka_ok = await kafka()
        down = sorted(health.down_since) if health else []
        ok = redis_ok and kafka_ok and not down
        body = {"status": "ok" if ok else "degraded", "redis": redis_ok, "kafka": kafka_ok, "waiting_on": down}
        return self.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; Prometheus reads the version alone
        return self.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")


def once(start: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """`start` on the first call only: an engine loads its Redis state inside Faust's event loop,
    before the first batch or timer needs it."""
    started = False

    async def ready() -> None:
        nonlocal started
        if not started:
            await start()
            started = True

    return ready


def run_worker(app: faust.App, log_level: str, web_port: int) -> None:
    """Run `app` as a Faust worker (what `faust -A ... worker` does), with our log level and port."""
    level = "warn" if log_level in ("warn", "warning") else log_level
    sys.argv = [sys.argv[0], "worker", "--loglevel", level, "--web-port", str(web_port)]
    logging.getLogger("mode.timers").addFilter(_long_ticks)
    app.main()


def _long_ticks(record: logging.LogRecord) -> bool:
    """A tick that fires many timers outlasts the timer's interval; the next one simply starts
    later. Mode would warn each time (dozens of lines during a replay): left out."""
    return not str(record.msg).startswith("Timer %s is overlapping")


def start_worker(name: str, settings: Any, build: Callable[[], faust.App], web_port: int) -> None:
    """Create the topic table (waiting for a broker that is away at start, as during work), then
    run the app `build()` makes as a Faust worker."""
    asyncio.run(
        retry(lambda: ensure_topics(settings.kafka_bootstrap, replication=settings.kafka_replication), Health(name))
    )
    old = asyncio.run(retry(lambda: old_layout(settings), Health(name)))
    if old:
        sys.exit(f"{name}: Redis holds data of the earlier key layout ({old}): stop every worker and run "
                 "`crm migrate-keys` once")  # fmt: skip
    run_worker(build(), settings.log_level, web_port)


async def old_layout(settings: Any) -> str | None:
    """A key only the earlier (single-node) key layout writes, if Redis holds one."""
    redis = connect(settings.redis_url, settings.redis_cluster)
    try:
        for key in keys.OLD_LAYOUT_KEYS:
            if await redis.exists(key):
                return key
        return None
    finally:
        await redis.aclose()


def worker_main(name: str, settings_type: type[T], prepare: Callable[[T], Callable[[], faust.App]]) -> None:
    """The `python -m services.<name>` of a stream service: its settings from the environment and
    what `prepare(settings)` loads (rules files) checked first, a bad value ending start-up with
    one line naming the key; then the worker (`start_worker`) of the app the prepared builder makes."""
    try:
        settings = load_settings(settings_type)
        build = prepare(settings)
    except ConfigError as exc:
        sys.exit(f"{name}: {exc}")
    start_worker(name, settings, build, settings.web[1])


def engine_app(
    name: str,
    settings: StreamSettings,
    topics: Sequence[str],
    build: Callable[[Any, KafkaClients, CollectorRegistry], Any],
    registry: CollectorRegistry | None = None,
) -> faust.App:
    """The Faust app of stream service `name`: `build(redis, kafka, registry)` makes its engine
    (sending through `kafka`'s clients), which the app feeds batches of `topics` (as the consumer
    group `consumer_group(settings.group)`) and ticks; /healthz and /metrics on `settings.web`."""
    registry = registry if registry is not None else CollectorRegistry()
    host, port = settings.web
    datadir = settings.state_dir / f"faust-{name}"
    app = faust_app(settings.group, settings.kafka_bootstrap, host, port, settings.batch_max, datadir)
    redis = connect(settings.redis_url, settings.redis_cluster)
    kafka = KafkaClients()
    engine = build(redis, kafka, registry)
    serve_engine(app, engine=engine, clients=kafka, consumer_group=consumer_group(settings.group), topics=topics,
                 settings=settings, health=Health(name), redis=redis, registry=registry)  # fmt: skip
    return app


def consumer_group(group: str) -> str:
    """The Kafka consumer group of a stream service's workers."""
    return f"{group}-inputs"


class KafkaClients:
    """A stream worker's producer and consumer. They are made inside Faust's event loop (aiokafka
    needs it), after the engine that sends through them."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.consumer: Any = None
        self.started = False  # the producer is started: timers may send

    async def send(self, topic: str, key: bytes, value: bytes) -> Any:
        return await self.producer.send(topic, value, key=key)

    async def send_many(self, topic: str, items: list[tuple[bytes, bytes]]) -> None:
        await produce_many(self.producer, topic, items)

    async def send_to(self, topic: str, partition: int, value: bytes) -> Any:
        return await self.producer.send(topic, value, partition=partition)

    def owned(self, topics: Collection[str]) -> set[int]:
        """The partitions of `topics` assigned to this worker now (its shards)."""
        if self.consumer is None:
            return set()
        return {tp.partition for tp in self.consumer.assignment() if tp.topic in topics}


def serve_engine(
    app: faust.App,
    *,
    engine: Any,
    clients: KafkaClients,
    consumer_group: str,
    topics: Sequence[str],
    settings: Any,
    health: Health,
    redis: Any,
    registry: CollectorRegistry,
) -> None:
    """Run `engine` in `app`: a task feeds it batches of `topics` through the shared batch loop
    (consumer group `consumer_group`), a timer ticks it every `settings.timer_interval_seconds`,
    and the app serves /healthz and /metrics."""
    ready = once(engine.start)

    @app.task  # type: ignore[untyped-decorator]
    async def consume() -> None:
        clients.producer = engine_producer(settings.kafka_bootstrap)
        clients.consumer = engine_consumer(settings.kafka_bootstrap, consumer_group)
        await guarded(clients.producer.start, health)
        clients.started = True
        loop = BatchLoop(
            consumer=clients.consumer,
            engine=engine,
            topics=topics,
            health=health,
            ready=ready,
            batch_max=settings.batch_max,
            within_seconds=settings.batch_within_seconds,
        )
        try:
            await loop.run()
        finally:
            await clients.producer.stop()

    @app.timer(interval=settings.timer_interval_seconds)  # type: ignore[untyped-decorator]
    async def timers() -> None:
        async def tick() -> None:
            if clients.started:
                await ready()
                await engine.tick()

        await guarded(tick, health, once_only=True)

    add_pages(app, redis, registry, health, lambda: clients.producer)
