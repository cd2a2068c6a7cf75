"""Triggers through real Kafka + Redis: a scripted stream gives exactly the reminders, cart
reminders and win-back it should; a kill between a timer's registration and its firing still
gives one reminder; a crash while sending leaves no duplicate and loses nothing.

These run on a second, empty stack so the new consumer groups do not first read everything the
other tests produced."""

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.common import keys
from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_STAGE_TRANSITIONS,
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
    event_topic,
)
from services.common.messages import Message
from services.common.outbox import kafka_sent_since
from services.common.produce import Send
from services.common.tail import read_topic
from services.triggers.config import Guardrails, TriggerConfig
from services.triggers.engine import TriggerEngine
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings
from tests.conftest import StackInfo
from tests.integration.stager_process import StagerProcess, TriggersProcess

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = int(datetime(2024, 3, 5, 2, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00 in Shanghai
OUTPUTS = (TOPIC_TRIGGERS_COUPONS, TOPIC_TRIGGERS_REMINDERS, TOPIC_TRIGGERS_OUTREACH, TOPIC_TRIGGERS_SUPPRESSED)
SCHEMA = {"order": "crm.events.Order", "cart": "crm.events.Cart", "browse": "crm.events.Browse",
          "profile": "crm.events.Profile"}  # fmt: skip


@pytest.fixture
def no_holdout(tmp_path: Path) -> Path:
    """Rules file with no control groups, so every decision in these tests is a delivery."""
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"guardrails": {"holdout_share": 0, "global_holdout_share": 0}}))
    return path


def event(kind: str, tenant: str, customer: str, at: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    base = {"event_id": f"{tenant}-{customer}-{kind}-{at}-{uuid.uuid4().hex[:6]}", "customer_id": customer,
            "tenant": tenant, "event_time": at}  # fmt: skip
    return kind, {**base, **fields}


def order(
    tenant: str, customer: str, at: int, order_id: str, status: str, amount: float = 100.0
) -> tuple[str, dict[str, Any]]:
    return event("order", tenant, customer, at, order_id=order_id, status=status, amount=amount)


def cart(tenant: str, customer: str, at: int) -> tuple[str, dict[str, Any]]:
    return event("cart", tenant, customer, at, action="add", product_id="p1")


def browse(tenant: str, customer: str, at: int) -> tuple[str, dict[str, Any]]:
    return event("browse", tenant, customer, at, page_type="product", product_id="p1")


async def produce(stack: StackInfo, events: Iterable[tuple[str, dict[str, Any]]]) -> None:
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for kind, record in events:
            value = codec.encode(SCHEMA[kind], record)
            await producer.send_and_wait(event_topic(kind), value, key=record["customer_id"].encode())
    finally:
        await producer.stop()


async def outputs(stack: StackInfo, tenant: str) -> list[dict[str, Any]]:
    codec = default_codec()
    out: list[dict[str, Any]] = []
    for topic in OUTPUTS:
        async for record in read_topic(stack.kafka_bootstrap, topic, codec, idle_timeout=1.0):
            if record.get("tenant") == tenant and "trigger_id" in record:  # not the triggers' progress
                out.append({**record, "_topic": topic})
    return out


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 120.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {check.__name__}")


async def timer_registered(stack: StackInfo, tenant: str, customer: str) -> bool:
    redis = Redis.from_url(stack.redis_url)
    try:
        for shard in range(12):
            if await redis.zscore(keys.trigger_timers_key(tenant, shard), customer) is not None:
                return True
        return False
    finally:
        await redis.aclose()


def of(records: list[dict[str, Any]], customer: str, rule: str | None = None) -> list[dict[str, Any]]:
    return [r for r in records if r["customer_id"] == customer and (rule is None or r["rule"] == rule)]


def millis(value: Any) -> Any:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else value


@pytest.mark.timeout(600)
def test_scripted_stream_gives_exactly_the_expected_triggers(
    quiet_stack: StackInfo, tmp_path: Path, no_holdout: Path
) -> None:
    stack = quiet_stack
    tenant = f"shop-{uuid.uuid4().hex[:6]}"
    env = {"CRM_TRIGGER_RULES_FILE": str(no_holdout)}
    stager = StagerProcess(stack, f"stager-{tenant}", 21166, tmp_path / "stager.log").start()
    triggers = TriggersProcess(stack, f"triggers-{tenant}", 21167, tmp_path / "triggers.log", env).start()
    try:
        asyncio.run(
            produce(
                stack,
                [
                    order(tenant, "paid-in-time", T0, "o-a", "created"),
                    order(tenant, "paid-in-time", T0 + 10 * MIN, "o-a", "paid"),
                    order(tenant, "never-paid", T0, "o-b", "created"),
                    cart(tenant, "cart-only", T0),
                    order(tenant, "lapsing", T0, "o-d", "paid"),
                ],
            )
        )

        async def registered() -> bool:
            return await timer_registered(stack, tenant, "never-paid") and await timer_registered(
                stack, tenant, "cart-only"
            )

        asyncio.run(wait_for(registered))
        # Three months on, another customer's visit moves the clock past every timer and past
        # the lapsing customer's 90 days without a paid order.
        asyncio.run(produce(stack, [browse(tenant, "later", T0 + 91 * DAY)]))

        async def winback_seen() -> list[dict[str, Any]] | None:
            records = await outputs(stack, tenant)
            return records if of(records, "lapsing", "winback_declining") else None

        records = asyncio.run(wait_for(winback_seen, timeout=180))
        time.sleep(3)  # anything that would come twice has had time to
        records = asyncio.run(outputs(stack, tenant))
        metrics = triggers.metrics()
    finally:
        triggers.stop()
        stager.stop()

    assert of(records, "paid-in-time", "unpaid_order_reminder") == []
    unpaid = of(records, "never-paid", "unpaid_order_reminder")
    assert len(unpaid) == 1
    assert unpaid[0]["_topic"] == TOPIC_TRIGGERS_REMINDERS and unpaid[0]["channel"] == "sms"
    assert millis(unpaid[0]["decided_at"]) == T0 + 30 * MIN and unpaid[0]["cause"] == "order:o-b"
    assert unpaid[0]["suppressed"] is None
    carts = of(records, "cart-only", "abandoned_cart_reminder")
    assert len(carts) == 1 and millis(carts[0]["decided_at"]) == T0 + DAY
    assert carts[0]["_topic"] == TOPIC_TRIGGERS_REMINDERS
    winback = of(records, "lapsing", "winback_declining")
    assert len(winback) == 1 and winback[0]["_topic"] == TOPIC_TRIGGERS_OUTREACH
    assert millis(winback[0]["decided_at"]) == T0 + 90 * DAY
    assert winback[0]["offer"]["kind"] == "coupon"
    # the transitions behind the other default rules came through the stager too
    assert len(of(records, "cart-only", "considering_coupon")) == 1
    assert len(of(records, "lapsing", "first_purchase_gift")) == 1
    # only customers with a paid order are members who can decline (the one who paid in time too)
    assert sorted(r["customer_id"] for r in records if r["rule"] == "winback_declining") == ["lapsing", "paid-in-time"]
    ids = [r["trigger_id"] for r in records]
    assert len(ids) == len(set(ids))
    assert 'crm_triggers_decided_total{action="unpaid_order_reminder",channel="sms"}' in metrics
    assert "crm_triggers_timer_backlog" in metrics and "crm_triggers_decision_latency_seconds_count" in metrics


@pytest.mark.timeout(600)
def test_kill_between_timer_registration_and_firing_gives_one_reminder(
    quiet_stack: StackInfo, tmp_path: Path, no_holdout: Path
) -> None:
    stack = quiet_stack
    tenant = f"kill-{uuid.uuid4().hex[:6]}"
    group = f"triggers-{tenant}"
    # no stager here: the triggers' time follows their own inputs
    env = {"CRM_TRIGGER_RULES_FILE": str(no_holdout), "CRM_TRIGGERS_FOLLOW_STAGER": "false"}
    first = TriggersProcess(stack, group, 21168, tmp_path / "first.log", env).start()
    try:
        asyncio.run(produce(stack, [order(tenant, "buyer", T0, "o-1", "created")]))
        asyncio.run(wait_for(lambda: timer_registered(stack, tenant, "buyer")))

        async def backlog_shown() -> bool:
            return _counter(first.metrics(), "crm_triggers_timer_backlog ") >= 1

        asyncio.run(wait_for(backlog_shown, timeout=30))
    finally:
        first.kill()
    assert asyncio.run(outputs(stack, tenant)) == []
    second = TriggersProcess(stack, group, 21168, tmp_path / "second.log", env).start()
    try:
        asyncio.run(produce(stack, [cart(tenant, "someone-else", T0 + 2 * HOUR)]))

        async def reminded() -> list[dict[str, Any]]:
            return of(await outputs(stack, tenant), "buyer", "unpaid_order_reminder")

        asyncio.run(wait_for(reminded))
        time.sleep(3)
        records = asyncio.run(outputs(stack, tenant))
    finally:
        second.stop()
    reminders = of(records, "buyer", "unpaid_order_reminder")
    assert len(reminders) == 1 and millis(reminders[0]["decided_at"]) == T0 + 30 * MIN


async def _engine(
    stack: StackInfo, group: str, send: Send, lateness: float = 300.0, follow: bool = False
) -> tuple[TriggerEngine, Redis]:
    codec = default_codec()
    settings = TriggerSettings(
        allowed_lateness_seconds=lateness,
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=stack.redis_url,
        triggers_group=group,
        idle_flush_seconds=0.01,
        triggers_follow_stager=follow,  # the transitions here come from the test, with no progress records
        outbox_grace_seconds=0,
    )
    config = TriggerConfig(guardrails=Guardrails(holdout_share=0, global_holdout_share=0))
    redis = Redis.from_url(stack.redis_url)
    engine = TriggerEngine(redis=redis, send=send, codec=codec, config=config, settings=settings,
                           metrics=TriggerMetrics(CollectorRegistry()),
                           sent_since=kafka_sent_since(stack.kafka_bootstrap, codec))  # fmt: skip
    await engine.start()
    return engine, redis


class Crash(Exception):
    pass


@pytest.mark.timeout(300)
async def test_a_crash_while_sending_neither_duplicates_nor_loses_a_decision(quiet_stack: StackInfo) -> None:
    stack = quiet_stack
    tenant = f"outbox-{uuid.uuid4().hex[:6]}"
    group = f"triggers-{tenant}"
    codec = default_codec()
    customers = [f"c{i}" for i in range(40)]
    messages = []
    for i, customer in enumerate(customers):
        _, record = order(tenant, customer, T0, f"o-{i}", "created")
        # all in one partition (shard), so the crash falls inside one shard's batch of decisions
        messages.append(Message(event_topic("order"), 0, i, codec.encode("crm.events.Order", record)))
    _, late = cart(tenant, "clock", T0 + 2 * HOUR)
    messages.append(Message(event_topic("cart"), 0, 0, codec.encode("crm.events.Cart", late)))

    dying = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    await dying.start()
    await producer.start()
    sent = 0

    async def send_then_crash(topic: str, key: bytes, value: bytes) -> Any:
        nonlocal sent
        if sent == 15:
            raise Crash("the worker dies with part of the decisions sent")
        sent += 1
        return await dying.send(topic, value, key=key)

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    try:
        first, redis1 = await _engine(stack, group, send_then_crash)
        with pytest.raises(Crash):
            # 40 unpaid-order timers, which the last event's time passes: 40 reminders decided,
            # 15 sent, then the crash
            await first.process(messages)
        await dying.stop()  # what it had handed to the network reaches the broker
        await redis1.aclose()
        left = await _outbox_size(stack)
        assert left == 40  # none confirmed: the whole batch is still in the outbox

        second, redis2 = await _engine(stack, group, send)
        await second.tick()  # takes over the shards: sends only what is not on Kafka yet
        await second.tick()
        await redis2.aclose()
        assert await _outbox_size(stack) == 0
        assert second.metrics.recovered.labels("already_sent")._value.get() == 15
        assert second.metrics.recovered.labels("sent")._value.get() == 25
    finally:
        await producer.stop()
    records = [r for r in await outputs(stack, tenant) if r["rule"] == "unpaid_order_reminder"]
    assert sorted(r["customer_id"] for r in records) == sorted(customers)


async def _outbox_size(stack: StackInfo) -> int:
    redis = Redis.from_url(stack.redis_url)
    try:
        return sum([await redis.hlen(key) async for key in redis.scan_iter(match="crm:outbox:*")])
    finally:
        await redis.aclose()


@pytest.mark.timeout(600)
def test_two_workers_share_the_timers_and_fire_each_once(
    quiet_stack: StackInfo, tmp_path: Path, no_holdout: Path
) -> None:
    stack = quiet_stack
    tenant = f"pair-{uuid.uuid4().hex[:6]}"
    group = f"triggers-{tenant}"
    # no stager here: the triggers' time follows their own inputs
    env = {"CRM_TRIGGER_RULES_FILE": str(no_holdout), "CRM_TRIGGERS_FOLLOW_STAGER": "false"}
    buyers = [f"buyer-{i:02d}" for i in range(24)]
    one = TriggersProcess(stack, group, 21171, tmp_path / "one.log", env).start()
    two = TriggersProcess(stack, group, 21172, tmp_path / "two.log", env).start()
    try:

        async def both_own_partitions() -> bool:
            owned = [_counter(w.metrics(), "crm_triggers_owned_partitions ") for w in (one, two)]
            return all(n > 0 for n in owned) and sum(owned) == 12

        asyncio.run(wait_for(both_own_partitions, timeout=120))
        asyncio.run(produce(stack, [order(tenant, b, T0, f"o-{b}", "created") for b in buyers]))

        async def all_registered() -> bool:
            return all([await timer_registered(stack, tenant, b) for b in buyers])

        asyncio.run(wait_for(all_registered))
        # one customer's later event moves the tenant's time past every reminder
        asyncio.run(produce(stack, [cart(tenant, "clock", T0 + 2 * HOUR)]))

        async def reminded() -> bool:
            records = await outputs(stack, tenant)
            return len({r["customer_id"] for r in records if r["rule"] == "unpaid_order_reminder"}) == len(buyers)

        asyncio.run(wait_for(reminded, timeout=180))
        time.sleep(3)
        records = asyncio.run(outputs(stack, tenant))
        fired = [_counter(worker.metrics(), "crm_triggers_timer_customers_total") for worker in (one, two)]
    finally:
        one.stop()
        two.stop()
    reminders = [r["customer_id"] for r in records if r["rule"] == "unpaid_order_reminder"]
    assert sorted(reminders) == buyers
    assert all(n > 0 for n in fired), fired  # each worker fired the timers of its own partitions


def _counter(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.timeout(300)
async def test_a_customer_written_by_another_worker_meanwhile_is_decided_again(quiet_stack: StackInfo) -> None:
    """Two workers briefly holding the same partition (a rebalance) cannot both decide a cause:
    the second write finds the state changed, and decides again on what the first wrote."""
    stack = quiet_stack
    tenant = f"race-{uuid.uuid4().hex[:6]}"
    codec = default_codec()
    record = {"transition_id": "tr-race", "tenant": tenant, "customer_id": "c", "model": "pyramid",
              "from_stage": "aware", "to_stage": "considering", "at": T0, "cause": "e1"}  # fmt: skip
    message = Message("crm.stage.transitions", 3, 0, codec.encode("crm.stage.StageTransition", record))
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    try:
        # no lateness: the transition's own time is the watermark, so it is decided in its batch
        first, redis1 = await _engine(stack, f"first-{tenant}", send, lateness=0)
        second, redis2 = await _engine(stack, f"second-{tenant}", send, lateness=0)
        original_pipeline = redis1.pipeline
        interleaved: list[bool] = []

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe: Any = original_pipeline(*args, **kwargs)
            read = pipe.eval

            async def read_then_interleave(*a: Any, **kw: Any) -> Any:
                pipe.eval = read  # only the first read (of the WATCHed state) is interleaved
                result = await read(*a, **kw)
                if not interleaved:
                    interleaved.append(True)
                    await second.process([message])  # the other worker decides and writes first
                return result

            pipe.eval = read_then_interleave
            return pipe

        redis1.pipeline = pipeline  # type: ignore[method-assign]
        await first.process([message])
        assert interleaved and first.metrics.conflicts._value.get() == 1
        state = await redis1.hget(keys.trigger_state_key(tenant, 3, "c"), "s")
        assert state is not None
    finally:
        await producer.stop()
        await redis1.aclose()
        await redis2.aclose()
    coupons = [r for r in await outputs(stack, tenant) if r["rule"] == "considering_coupon"]
    assert len(coupons) == 1


@pytest.mark.timeout(120)
async def test_the_stagers_declared_progress_survives_a_crash(quiet_stack: StackInfo) -> None:
    """The progress record that raised a partition's ceiling lies behind the fence once applied: a
    worker that takes over after a crash must still know the ceiling, or that partition's timers
    wait for a record that never comes again."""
    run = uuid.uuid4().hex[:8]
    tenant, group = f"ceiling-{run}", f"ceiling-{run}"
    codec = default_codec()
    declared = 1_700_000_000_000
    record = {"tenant": tenant, "partition": 3, "watermark": declared, "source": "stager:test"}
    progress = Message(TOPIC_STAGE_TRANSITIONS, 3, 0, codec.encode("crm.stage.Progress", record))

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        raise AssertionError("nothing to send")

    first, redis1 = await _engine(quiet_stack, group, send, follow=True)
    await first.process([progress])
    await redis1.aclose()  # the worker dies; the next one starts from Redis alone
    second, redis2 = await _engine(quiet_stack, group, send, follow=True)
    try:
        assert second.clocks[tenant].ceilings == {3: declared}
        assert second.fence.applied[f"{TOPIC_STAGE_TRANSITIONS}:3"] == 1  # the record is not read again
    finally:
        await redis2.aclose()
