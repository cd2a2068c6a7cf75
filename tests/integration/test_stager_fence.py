"""A batch applied by one stager worker is not applied again by another that takes over the
partition (a rebalance), even when Kafka redelivers it: the applied-offset fence is read from
Redis for each batch, not only at start."""

import uuid
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common.avro import default_codec
from services.common.messages import Message
from services.stager.analytics import counts_now
from services.stager.config import StageRules
from services.stager.engine import Engine
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings
from tests.conftest import StackInfo
from tests.integration.lookup import floors

T0 = 1_700_000_000_000


async def test_a_batch_another_worker_applied_is_not_applied_twice(stack: StackInfo) -> None:
    tenant = f"fence-{uuid.uuid4().hex[:6]}"
    group = f"stager-fence-{tenant}"
    codec = default_codec()
    messages = []
    for i in range(20):
        record = {"event_id": f"{tenant}-{i}", "customer_id": f"c{i % 5}", "tenant": tenant, "event_time": T0 + i,
                  "order_id": f"o{i}", "status": "paid", "amount": 10.0}  # fmt: skip
        messages.append(Message("crm.events.order", 0, i, codec.encode("crm.events.Order", record)))
    sent: list[str] = []

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        sent.append(topic)

        async def done() -> None:
            return None

        return done()

    # no allowed lateness: the batch's own latest time is the watermark, so every fact is applied
    settings = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, stager_group=group,
                              allowed_lateness_seconds=0)  # fmt: skip
    redis = Redis.from_url(stack.redis_url)
    try:
        workers = []
        for _ in range(2):  # both start before either applies anything
            engine = Engine(redis=redis, send=send, codec=codec, rules=StageRules(), settings=settings,
                            metrics=StagerMetrics(CollectorRegistry()))  # fmt: skip
            await engine.start()
            workers.append(engine)
        await workers[0].process(messages)
        counts = await counts_now(redis, tenant, "pyramid")
        transitions = len(sent)
        await workers[1].process(messages)  # redelivered to the worker that now owns the partition
        assert await counts_now(redis, tenant, "pyramid") == counts
        assert len(sent) == transitions
        assert workers[1].metrics.redelivered._value.get() == len(messages)
        assert counts == {"loyal": 5}
        # a batch read again from below the floor leaves the floor where it is
        await workers[1].process(messages[:5])
        assert (await floors(redis, group))["crm.events.order:0"] == len(messages)
    finally:
        await redis.aclose()
