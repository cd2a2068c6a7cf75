"""Waiting for the pipeline says at once when a service has no worker, instead of timing out."""

import asyncio
import re
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

import crm.pipeline
import crm.replay
from crm.pipeline import pipeline, wait_pipeline, wait_service
from crm.replay import replay
from services.common import keys
from services.common.errors import CrmError
from services.common.units import Units
from services.stager.settings import StagerSettings
from services.triggers.settings import TriggerSettings
from tests.conftest import StackInfo
from tests.integration.stager_process import StagerProcess


async def test_a_service_without_a_worker_is_named_at_once(stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crm.pipeline, "JOIN_GRACE_SECONDS", 1.0)
    run = uuid.uuid4().hex[:8]
    stager = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                            stager_group=f"nobody-{run}")  # fmt: skip
    triggers = TriggerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                               triggers_group=f"nobody-{run}")  # fmt: skip
    services = pipeline(stager, triggers)
    assert [s.name for s in services] == ["stager", "triggers"]
    redis = Redis.from_url(stack.redis_url)
    started = time.monotonic()
    try:
        with pytest.raises(CrmError) as raised:
            await wait_pipeline(services, bootstrap=stack.kafka_bootstrap, redis=redis, tenant=f"t-{run}",
                                latest_ms=1, timeout=600, partitions=stager.partitions, say=print)  # fmt: skip
    finally:
        await redis.aclose()
    # every service without a worker is named, in the order data flows, whichever was asked first
    lines = str(raised.value).splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"no stager worker is consuming crm\.events\..*; start one with `crm stager worker`", lines[0])
    assert re.fullmatch(r"no triggers worker is consuming .*; start one with `crm triggers worker`", lines[1])
    assert time.monotonic() - started < 60, "it waited for its timeout instead of saying so"


async def test_a_worker_that_dies_during_the_wait_is_named(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The wait checks on the service it waits for: a stager killed while it is waited for is
    reported (once Kafka drops it from the group), not waited out to the timeout."""
    monkeypatch.setattr(crm.pipeline, "JOIN_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(crm.pipeline, "CHECK_SECONDS", 1.0)
    run = uuid.uuid4().hex[:8]
    stager = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                            stager_group=f"dying-{run}")  # fmt: skip
    worker = StagerProcess(stack, stager.stager_group, 22650, tmp_path / "stager.log").start()
    redis = Redis.from_url(stack.redis_url)
    try:
        await asyncio.sleep(8)  # it joins its group
        waiting = asyncio.create_task(
            wait_pipeline(
                pipeline(stager),
                bootstrap=stack.kafka_bootstrap,
                redis=redis,
                tenant=f"t-{run}",
                latest_ms=10**13,
                timeout=600,
                partitions=stager.partitions,
                say=print,
            )  # fmt: skip
        )
        await asyncio.sleep(3)
        assert not waiting.done()  # a worker is there: it waits for the clock that never comes
        worker.kill()
        started = time.monotonic()
        with pytest.raises(CrmError, match="every stager worker stopped consuming"):
            await asyncio.wait_for(waiting, 90)
        assert time.monotonic() - started < 60
    finally:
        worker.stop()
        await redis.aclose()


async def test_the_wait_holds_until_what_a_service_decided_is_on_kafka(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's applied offsets are written with its outbox, before its records are sent: a
    service whose fence and clock are complete but whose outbox still holds a record is not done
    (the next service would read its topics' ends without that record)."""

    async def present(*args: object, **kwargs: object) -> None:
        return None

    async def no_topics(*args: object) -> dict[str, int]:
        return {}

    monkeypatch.setattr(crm.pipeline, "consumed", present)
    monkeypatch.setattr(crm.pipeline, "end_offsets", no_topics)
    run = uuid.uuid4().hex[:8]
    tenant = f"t-{run}"
    triggers = TriggerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                               triggers_group=f"outbox-{run}")  # fmt: skip
    service = pipeline(StagerSettings(), triggers)[1]
    redis = Redis.from_url(stack.redis_url)
    shard = 11
    clock, outbox = keys.clock_key(service.clock, tenant, shard), keys.outbox_key(service.group, tenant, shard)
    try:
        await Units(redis).add({(tenant, shard)})
        await redis.set(clock, "5000:5000")
        await redis.hset(outbox, f"test-{run}", b"a decided record")
        waiting = asyncio.create_task(
            wait_service(
                service,
                bootstrap=stack.kafka_bootstrap,
                redis=redis,
                tenant=tenant,
                latest_ms=5000,
                timeout=60,
                partitions=triggers.partitions,
                say=print,
            )  # fmt: skip
        )
        await asyncio.sleep(2)
        assert not waiting.done(), "it returned while a decided record was not yet on Kafka"
        await redis.hdel(outbox, f"test-{run}")
        await asyncio.wait_for(waiting, 10)
    finally:
        await redis.delete(clock, outbox)
        await redis.aclose()


async def test_a_replay_names_every_service_without_a_worker_before_producing(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(crm.pipeline, "JOIN_GRACE_SECONDS", 1.0)
    run = uuid.uuid4().hex[:8]
    stager = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                            stager_group=f"nobody-{run}")  # fmt: skip
    triggers = TriggerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                               triggers_group=f"nobody-{run}")  # fmt: skip
    data = tmp_path / "cdnow.txt"
    data.write_text(" 00001 19970101  1   11.77\n 00002 19970112  1   12.00\n")
    with pytest.raises(CrmError) as raised:
        await replay(stager, data, "cdnow", f"t-{run}", triggers=triggers, timeout=600, say=print)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("no stager worker is consuming"), lines
    assert lines[1].startswith("no triggers worker is consuming"), lines
    redis = Redis.from_url(stack.redis_url)
    try:  # nothing was produced: the ledger holds no progress for the file
        assert not await redis.hlen(crm.replay._ledger_key(f"t-{run}"))
    finally:
        await redis.aclose()
