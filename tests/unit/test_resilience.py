"""Outages are waited out: `retry` keeps calling through Kafka and Redis errors, marks the
dependency down while it waits and up after; other errors go through at once."""

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.resilience import Backoff, Health, retry


async def test_retry_waits_out_an_outage_and_reports_health() -> None:
    health = Health("test")
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RedisConnectionError("gone")
        if len(calls) == 2:
            assert not health.ok and "redis" in health.down_since
            raise KafkaConnectionError("gone too")
        return "done"

    assert await retry(flaky, health, Backoff(first=0.001, cap=0.002)) == "done"
    assert len(calls) == 3 and health.ok


async def test_other_errors_are_not_retried() -> None:
    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await retry(broken, Health("test"), Backoff(first=0.001))


async def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.001, cap=0.004)
    for _ in range(4):
        await backoff.wait()
    assert backoff.delay == 0.004
    backoff.reset()
    assert backoff.delay == 0.001
    await asyncio.sleep(0)
