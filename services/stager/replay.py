"""`crm replay`: a dataset's events, in event-time order, through the normal ingest path, then
wait until the stager has applied all of them and its clock stands at the latest event time."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from tqdm import tqdm

from services.common import keys
from services.common.avro import default_codec
from services.common.clock import tenant_clock
from services.common.constants import REDIS_PREFIX
from services.common.errors import CrmError
from services.common.topics import ensure_topics
from services.ingest.core import Ingestor, make_producer
from services.ingest.datasets import read_dataset
from services.ingest.metrics import IngestMetrics
from services.ingest.validate import Limits, RawItem
from services.stager.app import SOURCE_TOPICS
from services.stager.settings import StagerSettings

__all__ = ["ReplayReport", "replay", "wait_applied"]

BATCH = 2000


@dataclass(frozen=True)
class ReplayReport:
    events: int
    accepted: int
    rejected: int
    latest_ms: int
    skipped: bool = False


def _ledger_key(tenant: str) -> str:
    return f"{REDIS_PREFIX}replays:{tenant}"


async def replay(
    settings: StagerSettings,
    path: Path,
    fmt: str,
    tenant: str,
    speed: float | None = None,
    wait: bool = True,
    force: bool = False,
    timeout: float = 600.0,
    say: Callable[[str], None] = print,
) -> ReplayReport:
    """Produce every event of `path` under `tenant`; with `wait`, return once the stager has applied them."""
    redis: Any = Redis.from_url(settings.redis_url)
    ledger = _ledger_key(tenant)
    digest = f"{fmt}:{hashlib.sha256(path.read_bytes()).hexdigest()[:20]}"
    try:
        events = read_dataset(path, fmt, tenant)
        done = await redis.hget(ledger, digest)
        produced, accepted, latest = (int(x) for x in done.split(b":")) if done and not force else (0, 0, 0)
        if produced >= len(events):
            say(f"{path.name} was already replayed under tenant {tenant!r} ({accepted} events); nothing to produce")
        else:
            if produced:
                say(f"resuming {path.name} after {produced} events already produced")
            await ensure_topics(settings.kafka_bootstrap)

            async def progress(n: int, ok: int, last: int) -> None:
                await redis.hset(ledger, digest, f"{n}:{ok}:{last}")

            accepted, latest = await _produce(settings, events, produced, accepted, latest, path.name, speed, progress)
            say(f"produced {len(events) - produced} events; {len(events) - accepted} rejected to crm.events.dlq")
        if wait:
            await wait_applied(settings, redis, tenant, latest, timeout, say)
        return ReplayReport(len(events), accepted, len(events) - accepted, latest, skipped=produced >= len(events))
    finally:
        await redis.aclose()


async def _produce(
    settings: StagerSettings,
    events: list[dict[str, Any]],
    start: int,
    accepted: int,
    latest: int,
    name: str,
    speed: float | None,
    progress: Callable[[int, int, int], Awaitable[None]],
) -> tuple[int, int]:
    """Produce events[start:]; after each acknowledged batch the ledger records how far it got,
    so an interrupted replay resumes instead of producing events twice."""
    producer = make_producer(settings.kafka_bootstrap)
    await producer.start()
    ingestor = Ingestor(default_codec(), producer, IngestMetrics(CollectorRegistry()), Limits())
    previous_time: int | None = None
    try:
        with tqdm(total=len(events), initial=start, unit="ev", desc=f"replaying {name}", disable=None) as bar:
            for first in range(start, len(events), BATCH):
                chunk = events[first : first + BATCH]
                if speed and previous_time is not None:
                    await asyncio.sleep(max(0.0, (chunk[0]["event_time"] - previous_time) / 1000 / speed))
                items = [RawItem(json.dumps(e).encode(), e) for e in chunk]
                for event, result in zip(chunk, await ingestor.ingest(items, f"replay:{name}"), strict=True):
                    if result.accepted:
                        accepted += 1
                        latest = max(latest, event["event_time"])
                await progress(first + len(chunk), accepted, latest)
                previous_time = chunk[-1]["event_time"]
                bar.update(len(chunk))
    finally:
        await producer.stop()
    return accepted, latest


async def _end_offsets(bootstrap: str) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in SOURCE_TOPICS for p in range(12)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {f"{tp.topic}:{tp.partition}": end for tp, end in ends.items() if end > 0}


async def wait_applied(
    settings: StagerSettings, redis: Any, tenant: str, latest_ms: int, timeout: float, say: Callable[[str], None]
) -> None:
    """Until the stager has applied every message now on its topics, its clock for `tenant` stands
    at `latest_ms` or later, and no timer of the tenant is due at or before that clock."""
    ends = await _end_offsets(settings.kafka_bootstrap)
    deadline = time.monotonic() + timeout
    offsets_key = keys.applied_offsets_key(settings.stager_group)
    said = 0.0
    while True:
        applied = {k.decode(): int(v) for k, v in (await redis.hgetall(offsets_key)).items()}
        behind = sum(max(0, end - applied.get(tp, 0)) for tp, end in ends.items())
        # over every worker's shards, so this holds with one stager worker or several
        latest, watermark = tenant_clock(await redis.hgetall(keys.shard_clock_key()), tenant)
        due = 0
        if behind == 0 and watermark >= latest_ms and watermark == latest:
            for shard in range(12):
                due += await redis.zcount(keys.timers_key(tenant, shard), "-inf", watermark)
            if due == 0:
                return
        if time.monotonic() > deadline:
            raise CrmError(
                f"the stager did not catch up within {timeout:.0f}s ({behind} messages behind); "
                "is it running? (crm stager worker)"
            )
        if time.monotonic() - said > 5:
            say(f"waiting for the stager: {behind} messages to apply, {due} timers due")
            said = time.monotonic()
        await asyncio.sleep(0.2)
