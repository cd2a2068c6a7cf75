"""What every Faust worker of the engine shares: the app's settings, and the health and
metrics pages."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.common.constants import DEFAULT_PARTITIONS
from services.common.messages import Message

__all__ = ["add_pages", "faust_app", "once", "run_worker", "to_messages"]


def faust_app(
    group: str, kafka_bootstrap: str, web_host: str, web_port: int, batch_max: int, datadir: Path
) -> faust.App:
    """A Faust app reading raw bytes (the engines decode Avro themselves), committing every
    second, with `acks=all` and Faust's tables kept in memory (Redis is the state store)."""
    return faust.App(
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


def add_pages(app: faust.App, redis: Any, registry: CollectorRegistry) -> None:
    """`/healthz` (200 while Redis answers, else 503) and `/metrics` (Prometheus text)."""

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        ok = bool(await redis.ping())
        return self.json({"status": "ok" if ok else "degraded", "redis": ok}, status=200 if ok else 503)

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
    app.main()
