"""A batch is applied per unit (a tenant's shard): hundreds of tenants in one batch are applied
without running Redis out of connections, and a unit that fails leaves the others of its batch
whole, their outbox records sent (not left for a restart to find)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common import keys
from services.common.avro import default_codec
from services.common.engine import Batch
from services.common.messages import Message
from services.stager.analytics import counts_now
from services.stager.config import StageRules
from services.stager.engine import Engine
from services.stager.metrics import StagerMetrics
from services.stager.rules import Fact
from services.stager.settings import StagerSettings
from tests.conftest import StackInfo

T0 = 1_700_000_000_000


def _order(tenant: str, customer: str, offset: int, amount: float = 10.0) -> Message:
    record = {"event_id": f"{tenant}-{offset}", "customer_id": customer, "tenant": tenant, "event_time": T0 + offset,
              "order_id": f"o{offset}", "status": "paid", "amount": amount}  # fmt: skip
    return Message("crm.events.order", 0, offset, default_codec().encode("crm.events.Order", record))


async def _sent(topic: str, key: bytes, value: bytes) -> Any:
    async def done() -> None:
        return None

    return done()


def _settings(stack: StackInfo, group: str) -> StagerSettings:
    return StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, stager_group=group,
                          allowed_lateness_seconds=0)  # fmt: skip


async def test_hundreds_of_tenants_in_one_batch_are_all_applied(stack: StackInfo) -> None:
    run = uuid.uuid4().hex[:6]
    tenants = [f"many-{run}-{i}" for i in range(400)]
    redis: Any = Redis.from_url(stack.redis_url)  # a pool of redis-py's default size
    try:
        settings, metrics = _settings(stack, f"many-{run}"), StagerMetrics(CollectorRegistry())
        engine = Engine(redis=redis, send=_sent, codec=default_codec(), rules=StageRules(), settings=settings,
                        metrics=metrics)  # fmt: skip
        await engine.start()
        await engine.process([_order(t, "c", i) for i, t in enumerate(tenants)])
        found = await asyncio.gather(*(counts_now(redis, t, "pyramid") for t in tenants[::20]))
        assert found == [{"first_purchase": 1}] * len(tenants[::20])
        assert (await counts_now(redis, tenants[-1], "lifecycle")) == {"new": 1}
    finally:
        await redis.aclose()


class _OneUnitFails(Engine):
    """Unit `bad` fails once `good` has written its MULTI, while `good` is still on its way to send."""

    bad = good = ""
    written: asyncio.Event

    async def apply(self, batch: Batch[Fact]) -> None:
        if batch.tenant == self.bad:
            await self.written.wait()
            raise RuntimeError("this unit's rules choke")
        await super().apply(batch)
        if batch.tenant == self.good:
            self.written.set()
            await asyncio.sleep(0.3)


async def test_a_failing_unit_leaves_the_other_units_of_its_batch_whole(stack: StackInfo) -> None:
    run = uuid.uuid4().hex[:6]
    good, bad = f"good-{run}", f"bad-{run}"
    redis: Any = Redis.from_url(stack.redis_url)
    group = f"units-{run}"
    try:
        settings, metrics = _settings(stack, group), StagerMetrics(CollectorRegistry())
        engine = _OneUnitFails(redis=redis, send=_sent, codec=default_codec(), rules=StageRules(), settings=settings,
                               metrics=metrics)  # fmt: skip
        engine.good, engine.bad, engine.written = good, bad, asyncio.Event()
        await engine.start()
        # good's second order has a negative amount: dead-lettered through good's outbox
        batch = [_order(good, "c", 0), _order(bad, "c", 1), _order(good, "c", 2, amount=-1.0)]
        with pytest.raises(RuntimeError, match="choke"):
            await engine.process(batch)
        assert await counts_now(redis, good, "pyramid") == {"first_purchase": 1}
        assert await redis.hlen(keys.outbox_key(group, good, 0)) == 0, "good's dead letter was left in its outbox"
        fence = await redis.hgetall(keys.applied_offsets_key(group, good, 0))
        assert fence == {b"crm.events.order:0": b"3"}
    finally:
        await redis.aclose()
