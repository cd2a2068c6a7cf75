"""After an outage the engine takes its clocks again from Redis, where they were written with the
fence: Redis may have lost its last writes (AOF fsync every second), and a clock left ahead in
memory would let the history worker close days whose transitions are about to be read again
(it dead-lettered them 'too late'). A forged far-off progress record cannot close days beyond
the data either."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.analytics import query
from services.analytics.engine import AnalyticsEngine
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.settings import AnalyticsSettings
from services.common import keys
from services.common.avro import default_codec
from services.common.constants import TOPIC_STAGE_TRANSITIONS
from services.common.messages import Message
from tests.conftest import StackInfo

DAY = 86_400_000
T0 = 1_700_006_400_000  # a midnight (UTC)


def _messages(tenant: str, progress_at: int) -> list[Message]:
    codec = default_codec()
    progress = codec.encode("crm.stage.Progress", {"tenant": tenant, "partition": 0, "watermark": progress_at,
                                                   "source": "stager:test"})  # fmt: skip
    moves = [
        codec.encode("crm.stage.StageTransition", {"transition_id": f"t{n}", "tenant": tenant, "customer_id": f"c{n}",
                                                   "model": "aipl", "from_stage": None, "to_stage": "A",
                                                   "at": T0 + n * DAY + 3_600_000, "cause": f"e{n}", "seq": 1})
        for n in range(4)
    ]  # fmt: skip
    values = [progress, *moves]
    return [Message(TOPIC_STAGE_TRANSITIONS, 0, offset, value) for offset, value in enumerate(values)]


async def _engine(stack: StackInfo, group: str, sent: list[Any]) -> AnalyticsEngine:
    settings = AnalyticsSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                 analytics_group=group, idle_flush_seconds=0.01)  # fmt: skip

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        sent.append(value)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def nothing_sent(topics: Any, since: int, wanted: set[str]) -> set[str]:
        return set()

    engine = AnalyticsEngine(redis=Redis.from_url(stack.redis_url), send=send, codec=default_codec(),
                             settings=settings, metrics=AnalyticsMetrics(CollectorRegistry()),
                             sent_since=nothing_sent, shards=lambda: [0])  # fmt: skip
    await engine.start()
    return engine


async def _lost_writes(stack: StackInfo, group: str, tenant: str) -> None:
    """What Redis loses when it dies before syncing a batch: its fence, clocks and history."""
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        await redis.delete(keys.applied_offsets_key(group, tenant, 0), keys.applied_offsets_key(group, "", 0))
        await redis.delete(keys.clock_key(query.CLOCK, tenant, 0))
        found = [k async for k in redis.scan_iter(match=f"crm:hist:{{{tenant}:*")]
        if found:
            await redis.delete(*found)
    finally:
        await redis.aclose()


def _later(tenant: str, offset: int) -> Message:
    """A transition a week after the others, read after them."""
    value = default_codec().encode("crm.stage.StageTransition", {
        "transition_id": "t-later", "tenant": tenant, "customer_id": "c-later", "model": "aipl", "from_stage": None,
        "to_stage": "A", "at": T0 + 10 * DAY, "cause": "e-later", "seq": 1})  # fmt: skip
    return Message(TOPIC_STAGE_TRANSITIONS, 0, offset, value)


async def _scenario(stack: StackInfo, progress_at: int) -> tuple[list[Any], dict[str, int]]:
    tenant, group = f"reload-{uuid.uuid4().hex[:8]}", f"reload-{uuid.uuid4().hex[:8]}"
    sent: list[Any] = []
    engine = await _engine(stack, group, sent)
    try:
        batch = _messages(tenant, progress_at)
        await engine.process(batch)  # applied, then lost by Redis
        await _lost_writes(stack, group, tenant)
        engine.reset()  # what the batch loop does once Redis answers again
        time.sleep(0.05)
        await engine.tick()  # an idle tick before the batch is read again
        await engine.process(batch)
        time.sleep(0.05)
        await engine.tick()
        await engine.process([_later(tenant, len(batch))])
        counts = await query.counts(engine.redis, tenant, "aipl", 10**14 - 1, partitions=12)
        return sent, counts
    finally:
        await engine.redis.aclose()


def test_after_an_outage_that_lost_writes_no_transition_is_judged_late(stack: StackInfo) -> None:
    sent, counts = asyncio.run(_scenario(stack, T0 + 3 * DAY + 3_600_000))
    assert sent == [], "a transition read again was dead-lettered"
    assert counts["A"] == 5


def test_a_far_off_progress_record_closes_no_day_beyond_the_data(stack: StackInfo) -> None:
    sent, counts = asyncio.run(_scenario(stack, 64_000_000_000_000))  # year ~3998
    assert sent == [], "a transition after the data was judged late"
    assert counts["A"] == 5
