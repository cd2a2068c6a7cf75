"""`crm replay`: a dataset's events, in event-time order, through the normal ingest path, then
wait until the stager has applied all of them and its clock stands at the latest event time.

With `--speed N`, wall time follows event time at N event seconds per wall second (see
`pacing`). Redis or Kafka briefly away delays the replay instead of ending it: the ledger and
each chunk's produce are retried with a bounded backoff (a chunk produced again is harmless, the
engine drops repeats by `event_id`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from tqdm import tqdm

from crm.datasets import read_dataset
from crm.pacing import event_times, plan_chunks
from crm.pipeline import check_workers, pipeline, wait_pipeline
from services.analytics.settings import AnalyticsSettings
from services.attribution.settings import AttributionSettings
from services.common.avro import default_codec
from services.common.constants import REDIS_PREFIX
from services.common.errors import CrmError
from services.common.redisbatch import connect
from services.common.resilience import REDIS_OUTAGES
from services.common.topics import ensure_topics
from services.ingest.core import Ingestor, ItemResult, make_producer
from services.ingest.metrics import IngestMetrics
from services.ingest.validate import Limits, RawItem
from services.stager.settings import StagerSettings
from services.triggers.settings import TriggerSettings

__all__ = ["ReplayReport", "replay", "wait_applied"]

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
RETRY_FOR_SECONDS = 300.0
# what "briefly unavailable" raises: Kafka not acknowledging (NotAcknowledged is a ConnectionError),
# Redis not answering
_TRANSIENT = (KafkaError, ConnectionError, TimeoutError, OSError, *REDIS_OUTAGES)

T = TypeVar("T")


async def _retrying(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`'s result, trying again with a growing, bounded pause while it fails for a reason
    that passes; one log line when it first fails; CrmError after RETRY_FOR_SECONDS."""
    pause = RETRY_FIRST_SECONDS
    give_up = time.monotonic() + RETRY_FOR_SECONDS
    said = False
    while True:
        try:
            return await attempt()
        except _TRANSIENT as exc:
            if time.monotonic() + pause > give_up:
                raise CrmError(f"{what} kept failing for {RETRY_FOR_SECONDS:.0f}s: {exc}") from exc
            if not said:
                log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
                said = True
        await asyncio.sleep(pause)
        pause = min(RETRY_MAX_SECONDS, pause * 2)


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
    triggers: TriggerSettings | None = None,
    attribution: AttributionSettings | None = None,
    analytics: AnalyticsSettings | None = None,
) -> ReplayReport:
    """Produce every event of `path` under `tenant`; with `wait`, return once the stager (and,
    given their settings, the triggers and attribution) has applied them and fired the timers
    due by their time."""
    redis: Any = connect(settings.redis_url, settings.redis_cluster)
    ledger = _ledger_key(tenant)
    digest = f"{fmt}:{hashlib.sha256(path.read_bytes()).hexdigest()[:20]}"
    try:
        events = read_dataset(path, fmt, tenant)
        done = await _retrying("reading the replay ledger", lambda: redis.hget(ledger, digest))
        produced, accepted, latest = (int(x) for x in done.split(b":")) if done and not force else (0, 0, 0)
        if produced >= len(events):
            say(f"{path.name} was already replayed under tenant {tenant!r} ({accepted} events); nothing to produce")
        else:
            if produced:
                say(f"resuming {path.name} after {produced} events already produced")
            await _retrying(
                "creating the topics",
                lambda: ensure_topics(settings.kafka_bootstrap, replication=settings.kafka_replication),
            )
            if wait:  # a service with no worker is named now, not after the whole replay was produced
                services = pipeline(settings, triggers, attribution, analytics)
                await check_workers(services, bootstrap=settings.kafka_bootstrap, retrying=_retrying)

            async def progress(n: int, ok: int, last: int) -> None:
                await _retrying("writing the replay ledger", lambda: redis.hset(ledger, digest, f"{n}:{ok}:{last}"))

            accepted, latest = await _produce(settings, events, produced, accepted, latest, path.name, speed, progress)
            say(f"produced {len(events) - produced} events; {len(events) - accepted} rejected to crm.events.dlq")
        if wait:
            await wait_applied(settings, redis, tenant, latest, timeout, say, triggers, attribution, analytics)
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
    """Produce events[start:] in event-time order, paced for `speed`; after each acknowledged chunk
    the ledger records how far it got, so an interrupted replay resumes instead of producing
    events twice."""
    producer = make_producer(settings.kafka_bootstrap)
    await _retrying("connecting to Kafka", producer.start)
    ingestor = Ingestor(default_codec(), producer, IngestMetrics(CollectorRegistry()), Limits())
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        with tqdm(total=len(events), initial=start, unit="ev", desc=f"replaying {name}", disable=None) as bar:
            span = settings.lateness_ms / 2  # what the engines wait for stragglers, with room to spare
            for chunk in plan_chunks(event_times(events), start, speed, max_span_ms=span):
                await asyncio.sleep(max(0.0, began + chunk.due - loop.time()))
                part = events[chunk.start : chunk.end]
                items = [RawItem(json.dumps(e).encode(), e) for e in part]

                async def produce(items: list[RawItem] = items) -> list[ItemResult]:
                    return await ingestor.ingest(items, f"replay:{name}")

                results = await _retrying(f"producing events {chunk.start}-{chunk.end}", produce)
                for event, result in zip(part, results, strict=True):
                    if result.accepted:
                        accepted += 1
                        latest = max(latest, event["event_time"])
                await progress(chunk.end, accepted, latest)
                bar.update(len(part))
    finally:
        await producer.stop()
    return accepted, latest


async def wait_applied(
    settings: StagerSettings,
    redis: Any,
    tenant: str,
    latest_ms: int,
    timeout: float,
    say: Callable[[str], None],
    triggers: TriggerSettings | None = None,
    attribution: AttributionSettings | None = None,
    analytics: AnalyticsSettings | None = None,
) -> None:
    """Until the stager (and, given their settings, the triggers and attribution after it) has
    applied every message now on its topics, its clock for `tenant` stands at `latest_ms` or
    later, and no timer of the tenant is due by then; at once an error when no worker of a
    service is consuming."""
    services = pipeline(settings, triggers, attribution, analytics)
    await wait_pipeline(services, bootstrap=settings.kafka_bootstrap, redis=redis, tenant=tenant,
                        latest_ms=latest_ms, timeout=timeout, partitions=settings.partitions, say=say,
                        retrying=_retrying)  # fmt: skip
