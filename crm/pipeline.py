"""Waiting for the whole pipeline: every stream service has applied all its inputs for a tenant
and fired its due timers, read from what the shared engine writes (the applied-offset fence,
the shard clocks, the timer sets), so it holds for any number of workers of each service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from services.analytics.app import SOURCE_TOPICS as ANALYTICS_TOPICS
from services.analytics.query import CLOCK as ANALYTICS_CLOCK
from services.analytics.settings import AnalyticsSettings
from services.attribution.app import SOURCE_TOPICS as ATTRIBUTION_TOPICS
from services.attribution.engine import CLOCK as ATTRIBUTION_CLOCK
from services.attribution.settings import AttributionSettings
from services.common import keys
from services.common.clock import tenant_clock
from services.common.errors import CrmError
from services.common.faustapp import consumer_group
from services.common.fence import FLOOR
from services.common.units import read_clocks, read_floors, read_units
from services.stager.app import SOURCE_TOPICS as STAGER_TOPICS
from services.stager.engine import CLOCK as STAGER_CLOCK
from services.stager.settings import StagerSettings
from services.triggers.app import SOURCE_TOPICS as TRIGGER_TOPICS
from services.triggers.engine import CLOCK as TRIGGERS_CLOCK
from services.triggers.settings import TriggerSettings

__all__ = [
    "Service",
    "check_workers",
    "consumed",
    "end_offsets",
    "members",
    "pipeline",
    "unsent_records",
    "wait_pipeline",
    "wait_service",
]

T = TypeVar("T")
Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
# how long a service may take to show a consumer group member (a worker just started joins)
JOIN_GRACE_SECONDS = 20.0
# how often a wait checks that the service it waits for still has a worker
CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Service:
    """A stream service as a waiting tool sees it: where its positions, clocks and timers are."""

    name: str
    consumer_group: str  # the Kafka consumer group of its workers
    topics: tuple[str, ...]
    group: str  # names its applied-offset fences and its outboxes (`keys.outbox_key`)
    clock: str  # names its clocks (`keys.clock_key`)
    timers_key: Callable[[str, int], str]

    @property
    def start_hint(self) -> str:
        return f"crm {self.name} worker"


def pipeline(
    stager: StagerSettings,
    triggers: TriggerSettings | None = None,
    attribution: AttributionSettings | None = None,
    analytics: AnalyticsSettings | None = None,
) -> list[Service]:
    """The stream services in the order data flows through them (the triggers read what the
    stager writes, attribution what the triggers write, analytics what the stager writes); a
    service whose settings are not given is not waited for."""
    wanted = [
        ("stager", stager, STAGER_TOPICS, STAGER_CLOCK, keys.timers_key),
        ("triggers", triggers, TRIGGER_TOPICS, TRIGGERS_CLOCK, keys.trigger_timers_key),
        ("attribution", attribution, ATTRIBUTION_TOPICS, ATTRIBUTION_CLOCK, keys.attribution_timers_key),
        ("analytics", analytics, ANALYTICS_TOPICS, ANALYTICS_CLOCK, keys.analytics_timers_key),
    ]
    return [
        Service(name, consumer_group(settings.group), topics, settings.group, clock, timers)
        for name, settings, topics, clock, timers in wanted
        if settings is not None
    ]


async def members(bootstrap: str, group: str) -> int:
    """How many consumers are in `group` now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described = await admin.describe_consumer_groups([group])
    except GroupCoordinatorNotAvailableError:  # no group has ever committed on this broker
        return 0
    finally:
        await admin.close()
    count = 0
    for response in described:
        for found in response.groups:
            count += len(found[5])  # (error, group, state, protocol type, protocol, members, ...)
    return count


async def end_offsets(bootstrap: str, topics: Sequence[str], partitions: int) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        ends = await consumer.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions)])
    finally:
        await consumer.stop()
    return {f"{tp.topic}:{tp.partition}": end for tp, end in ends.items() if end > 0}


async def _plain(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    return await attempt()


async def wait_service(
    service: Service,
    *,
    bootstrap: str,
    redis: Any,
    tenant: str,
    latest_ms: int,
    timeout: float,
    partitions: int,
    say: Callable[[str], None],
    retrying: Retrying = _plain,
) -> None:
    """Until `service` has applied every message now on its topics, its clock for `tenant`
    stands at `latest_ms` or later (over every worker's shards), none of the tenant's timers is
    due by then, and its outbox is empty (what it decided is on Kafka, where the next service
    reads it: the applied offsets move in the same MULTI as the outbox is written, before the
    records are sent). CrmError at once when no worker of the service is consuming, and after
    `timeout` seconds otherwise."""
    await consumed(service, bootstrap=bootstrap, retrying=retrying)
    ends = await retrying("reading the topics' end offsets", lambda: end_offsets(bootstrap, service.topics, partitions))
    deadline = time.monotonic() + timeout
    said = checked = time.monotonic()
    while True:
        if time.monotonic() - checked > CHECK_SECONDS:  # a worker may die while it is waited for
            await consumed(service, bootstrap=bootstrap, retrying=retrying, stopped=True)
            checked = time.monotonic()
        applied, clocks = await retrying(
            f"reading the {service.name}'s progress",
            lambda: asyncio.gather(read_floors(redis, service.group), read_clocks(redis, service.clock)),
        )
        behind = sum(max(0, end - applied.get(tp, 0)) for tp, end in ends.items())
        latest, watermark = tenant_clock(clocks, tenant)  # over every worker's shards
        due = unsent = 0
        if behind == 0 and watermark >= latest_ms:
            timers = [service.timers_key(tenant, shard) for shard in range(partitions)]
            counts = await retrying(
                f"reading the {service.name}'s timers",
                lambda: asyncio.gather(*(redis.zcount(k, "-inf", watermark) for k in timers)),  # noqa: B023
            )
            due = sum(counts)
            if due == 0:
                unsent = await retrying(f"reading the {service.name}'s outbox", lambda: unsent_records(redis, service))
                if unsent == 0:
                    return
        if time.monotonic() > deadline:
            raise CrmError(
                f"the {service.name} did not catch up within {timeout:.0f}s ({behind} messages behind, "
                f"{due} timers due, {unsent} records not yet on Kafka); is it running? (`{service.start_hint}`)"
            )
        if time.monotonic() - said > 5:
            say(
                f"waiting for the {service.name}: {behind} messages to apply, {due} timers due, "
                f"{unsent} records to send"
            )
            said = time.monotonic()
        await asyncio.sleep(0.2)


async def unsent_records(redis: Any, service: Service) -> int:
    """How many records `service` decided are not yet confirmed on Kafka (in its outboxes)."""
    units = await read_units(redis)
    units += [(FLOOR, shard) for shard in sorted({s for _, s in units})]
    async with redis.pipeline(transaction=False) as pipe:
        for tenant, shard in units:
            pipe.hlen(keys.outbox_key(service.group, tenant, shard))
        return sum(await pipe.execute())


async def consumed(service: Service, *, bootstrap: str, retrying: Retrying = _plain, stopped: bool = False) -> None:
    """Return once some worker of `service` is in its consumer group; CrmError naming the
    service and how to start it when none has joined within `JOIN_GRACE_SECONDS` (`stopped`:
    the workers were there before and have gone)."""
    started = time.monotonic()
    while not await retrying(f"asking who consumes for the {service.name}",
                             lambda: members(bootstrap, service.consumer_group)):  # fmt: skip
        if time.monotonic() - started > JOIN_GRACE_SECONDS:
            who = (
                f"every {service.name} worker stopped consuming"
                if stopped
                else f"no {service.name} worker is consuming"
            )
            raise CrmError(f"{who} {', '.join(service.topics)}; start one with `{service.start_hint}`")
        await asyncio.sleep(1.0)


async def check_workers(services: Sequence[Service], *, bootstrap: str, retrying: Retrying = _plain) -> None:
    """Return once every service of `services` has a worker in its consumer group; else one
    CrmError naming every service without one, a line each, in the order data flows."""
    checks = await asyncio.gather(
        *(consumed(s, bootstrap=bootstrap, retrying=retrying) for s in services), return_exceptions=True
    )
    missing = [str(found) for found in checks if isinstance(found, CrmError)]
    if missing:
        raise CrmError("\n".join(missing))
    for found in checks:
        if isinstance(found, BaseException):
            raise found


async def wait_pipeline(
    services: Sequence[Service],
    *,
    bootstrap: str,
    redis: Any,
    tenant: str,
    latest_ms: int,
    timeout: float,
    partitions: int,
    say: Callable[[str], None],
    retrying: Retrying = _plain,
) -> None:
    """`wait_service` for each service in turn, in the order data flows (what the triggers read
    is complete only once the stager is), within one overall `timeout`. A service with no worker
    is named first, before waiting on any."""
    await check_workers(services, bootstrap=bootstrap, retrying=retrying)
    deadline = time.monotonic() + timeout
    for service in services:
        await wait_service(service, bootstrap=bootstrap, redis=redis, tenant=tenant, latest_ms=latest_ms,
                           timeout=max(1.0, deadline - time.monotonic()), partitions=partitions, say=say,
                           retrying=retrying)  # fmt: skip
