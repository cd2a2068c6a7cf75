"""Attribution workers against a real broker and Redis.

A seeded synthetic population: trigger decisions (treatment) and hold-out records (control) of
one campaign, and paid orders, where a treated customer converts at a known higher rate than a
held-out one. The 95% interval the readout reports covers the true effect, the counts are those
the population was made with, and the same stream replayed under another tenant (other batch
sizes, two workers) gives the identical readout and the same attribution records."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from crm.pipeline import pipeline, wait_pipeline
from crm.replay import replay
from crm.report import campaign_readouts, campaign_table
from services.analytics.app import SOURCE_TOPICS as ANALYTICS_SOURCES
from services.attribution.app import SOURCE_TOPICS as ATTRIBUTION_TOPICS
from services.attribution.readout import Readout, readout, readout_record
from services.attribution.settings import AttributionSettings
from services.attribution.store import campaign_counters
from services.common import keys
from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_ATTRIBUTION,
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_SUPPRESSED,
    event_topic,
)
from services.common.tail import read_topic
from services.common.units import tenant_shards
from services.stager.settings import StagerSettings
from services.triggers.settings import TriggerSettings
from tests.conftest import StackInfo
from tests.integration.batch_attribution import campaign_counts, engine_figures
from tests.integration.batch_triggers import cdnow_orders
from tests.integration.stager_process import (
    AnalyticsProcess,
    AttributionProcess,
    StagerProcess,
    TriggersProcess,
    WorkerProcess,
)
from tests.integration.test_determinism import (
    CDNOW_SAMPLE,
    DECISIONS,
    STAGER_INPUTS,
    TRIGGER_INPUTS,
    _subset,
    start_at_end,
)

DAY = 86_400_000
T0 = 1_700_000_000_000
CUSTOMERS = 4000
P_TREATED, P_CONTROL = 0.30, 0.20  # chance of a paid order inside the 7-day window


def population(seed: int) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, int]]:
    """[(topic, schema, record)] of the synthetic stream in event-time order (tenant left blank),
    and what it holds: trials and conversions by group."""
    rnd = random.Random(seed)
    items: list[tuple[int, str, str, dict[str, Any]]] = []
    made = {"treatment": 0, "control": 0, "treatment_converted": 0, "control_converted": 0}
    for i in range(CUSTOMERS):
        customer = f"u{i}"
        treated = i % 2 == 0
        at = T0 + rnd.randrange(0, 20 * DAY)
        group = "treatment" if treated else "control"
        made[group] += 1
        items.append((at, *_touch(customer, at, treated, i)))
        if rnd.random() < (P_TREATED if treated else P_CONTROL):
            made[group + "_converted"] += 1
            when = at + rnd.randrange(1, 7 * DAY + 1)  # (touch, touch + 7 days]
            items.append((when, *_order(customer, f"o{i}", when, rnd.randrange(500, 20_000) / 100)))
        if rnd.random() < 0.3:  # an order outside the window: before the touch, or after it closed
            when = at - rnd.randrange(0, 3 * DAY) if rnd.random() < 0.5 else at + 7 * DAY + 1 + rnd.randrange(DAY)
            items.append((when, *_order(customer, f"x{i}", when, 12.5)))
    items.sort(key=lambda x: x[0])
    return [(topic, schema, record) for _, topic, schema, record in items], made


def _touch(customer: str, at: int, treated: bool, i: int) -> tuple[str, str, dict[str, Any]]:
    record = {
        "trigger_id": f"t{i}",
        "tenant": "",
        "customer_id": customer,
        "rule": "first_purchase_gift",
        "campaign_id": "first-purchase",
        "action": "coupon",
        "channel": "sms",
        "offer": {"kind": "amount_off", "value": 10.0, "cost": 2.0},
        "cause": f"order:{i}",
        "decided_at": at,
        "deliver_after": at,
        "suppressed": None if treated else "holdout",
    }
    return (TOPIC_TRIGGERS_COUPONS if treated else TOPIC_TRIGGERS_SUPPRESSED), "crm.triggers.Trigger", record


def _order(customer: str, order_id: str, at: int, amount: float) -> tuple[str, str, dict[str, Any]]:
    record = {
        "event_id": f"e-{order_id}",
        "customer_id": customer,
        "tenant": "",
        "event_time": at,
        "order_id": order_id,
        "status": "paid",
        "amount": amount,
        "currency": "CNY",
        "items": [],
        "coupon_code": None,
        "referrer_customer_id": None,
        "session_id": None,
    }
    return event_topic("order"), "crm.events.Order", record


async def _produce(bootstrap: str, tenant: str, stream: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    latest = 0
    try:
        pending = []
        for topic, schema, record in stream:
            record = {**record, "tenant": tenant}
            latest = max(latest, record.get("deliver_after") or record.get("event_time") or 0)
            value = codec.encode(schema, record)
            pending.append(await producer.send(topic, value, key=record["customer_id"].encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return latest


def _run(stack: StackInfo, tmp_path: Path, stream: list[tuple[str, str, dict[str, Any]]], name: str,
         workers: int, batch: int, port: int) -> tuple[str, list[Readout], str]:  # fmt: skip
    """The stream under a new tenant through new attribution workers; the tenant, its readouts and
    the first worker's metrics."""
    run = uuid.uuid4().hex[:6]
    tenant, group = f"attr-{name}-{run}", f"attribution-{name}-{run}"
    settings = AttributionSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                   attribution_group=group)  # fmt: skip
    procs: list[WorkerProcess] = [
        # no triggers worker runs here to declare its progress: attribution follows its inputs alone
        AttributionProcess(
            stack,
            group,
            port + i,
            tmp_path / f"{name}-attr{i}.log",
            {"CRM_BATCH_MAX": str(batch), "CRM_ATTRIBUTION_FOLLOW_TRIGGERS": "false"},
        )  # fmt: skip
        for i in range(workers)
    ]

    async def go() -> list[Readout]:
        latest = await _produce(stack.kafka_bootstrap, tenant, stream)
        redis = Redis.from_url(stack.redis_url)
        try:
            only = [s for s in pipeline(StagerSettings(), None, settings) if s.name == "attribution"]
            await wait_pipeline(only, bootstrap=stack.kafka_bootstrap, redis=redis, tenant=tenant, latest_ms=latest,
                                timeout=600, partitions=12, say=print)  # fmt: skip
            return await campaign_readouts(redis, tenant)
        finally:
            await redis.aclose()

    try:
        for proc in procs:
            proc.start()
        readouts = asyncio.run(go())
        return tenant, readouts, procs[0].metrics()
    finally:
        for proc in procs:
            proc.stop()


async def _records(bootstrap: str, tenant: str) -> list[tuple[Any, ...]]:
    out = []
    async for r in read_topic(bootstrap, TOPIC_ATTRIBUTION, default_codec(), idle_timeout=2.0):
        if r.get("tenant") == tenant:
            out.append((r["customer_id"], r["order_id"], r["trigger_id"], r["amount"], r["retracted"]))
    return sorted(out)


@pytest.mark.timeout(900)
def test_a_known_effect_is_covered_by_the_interval_and_a_second_replay_reads_the_same(
    quiet_stack: StackInfo, tmp_path: Path
) -> None:
    stream, made = population(seed=7)
    tenant, (first,), metrics = _run(quiet_stack, tmp_path, stream, "one", workers=1, batch=2000, port=22700)
    assert first.campaign_id == "first-purchase" and first.rule == "first_purchase_gift"
    assert (first.treatment.trials, first.control.trials) == (made["treatment"], made["control"])
    assert (first.treatment.converted, first.control.converted) == (
        made["treatment_converted"],
        made["control_converted"],
    )
    # one touch per customer: as many customers as trials, and no widening for clustering
    assert (first.treatment.customers, first.control.customers) == (made["treatment"], made["control"])
    assert first.treatment.design_effect == first.control.design_effect == 1.0
    ci = first.uplift_ci95
    assert ci is not None and ci[0] <= P_TREATED - P_CONTROL <= ci[1], ci
    assert ci[0] > 0  # and the effect is found
    # money: the channel's price per treated message, the offer's cost never (no coupon used)
    assert first.cost == pytest.approx(made["treatment"] * 0.05)
    assert first.roi is not None and first.incremental_revenue is not None and first.incremental_revenue > 0
    # every window of the population has ended before the stream's last event, or is still open
    assert first.final_trials + first.open_trials == made["treatment"] + made["control"]

    # the operator's report says the same (the JSON form of `crm report campaigns`)
    env = {**os.environ, "CRM_REDIS_URL": quiet_stack.redis_url}
    shown = subprocess.run([sys.executable, "-m", "crm.cli", "report", "campaigns", "--tenant", tenant, "--json"],
                           env=env, capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert json.loads(shown.stdout) == [first.as_dict()]
    table = subprocess.run([sys.executable, "-m", "crm.cli", "report", "campaigns", "--tenant", tenant],
                           env=env, capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "first-purchase" in table and "[+" in table

    again, (second,), _ = _run(quiet_stack, tmp_path, stream, "two", workers=2, batch=7, port=22710)
    assert second.as_dict() == first.as_dict()
    records = asyncio.run(_records(quiet_stack.kafka_bootstrap, tenant))
    assert records and records == asyncio.run(_records(quiet_stack.kafka_bootstrap, again))
    # one record per converting treated customer, crediting that customer's touch
    assert len(records) == made["treatment_converted"]
    assert all(trigger == f"t{customer[1:]}" for customer, _, trigger, _, _ in records)
    credited = re.search(r'crm_attribution_credited_orders_total\{campaign="first-purchase"\} (\S+)', metrics)
    assert credited is not None and float(credited.group(1)) == len(records)
    finalised = re.search(r'crm_attribution_finalised_trials_total\{group="control"\} (\S+)', metrics)
    assert finalised is not None and float(finalised.group(1)) > 0


@pytest.mark.timeout(1500)
def test_cdnow_through_the_whole_pipeline_equals_the_batch_computation_to_the_cent(
    quiet_stack: StackInfo, tmp_path: Path
) -> None:
    """CDNOW (600 customers) replayed through stager, triggers and attribution: each campaign's
    counters equal the independent batch computation from the trigger topics and the dataset's
    orders. The outreach was never really sent, so no campaign may show a real effect: each
    uplift interval covers zero or misses it narrowly."""
    data = _subset(CDNOW_SAMPLE, 600, tmp_path / "cdnow-600.txt")
    run = uuid.uuid4().hex[:6]
    # the control groups are a hash of the tenant: a fixed name gives the same groups, hence the
    # same figures, on every fresh stack (a stack kept from an earlier run gets the next name)
    tenant = asyncio.run(_unused_tenant(quiet_stack, "attr-cdnow"))
    groups = {name: f"{name}-cdnow-{run}" for name in ("stager", "triggers", "attribution")}
    stack = quiet_stack
    common: dict[str, Any] = {"kafka_bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url}
    stager = StagerSettings(**common, stager_group=groups["stager"])
    triggers = TriggerSettings(**common, triggers_group=groups["triggers"])
    attribution = AttributionSettings(**common, attribution_group=groups["attribution"])
    asyncio.run(start_at_end(stack, groups["stager"], STAGER_INPUTS))
    asyncio.run(start_at_end(stack, groups["triggers"], TRIGGER_INPUTS))
    asyncio.run(start_at_end(stack, groups["attribution"], ATTRIBUTION_TOPICS))
    history_group = f"analytics-cdnow-{run}"
    asyncio.run(start_at_end(stack, history_group, ANALYTICS_SOURCES))
    procs: list[WorkerProcess] = [
        StagerProcess(stack, groups["stager"], 22720, tmp_path / "stager.log"),
        TriggersProcess(stack, groups["triggers"], 22721, tmp_path / "triggers.log"),
        AttributionProcess(stack, groups["attribution"], 22722, tmp_path / "attribution.log",
                           {"CRM_ATTRIBUTION_READOUT_SECONDS": "1"}),
        AnalyticsProcess(stack, history_group, 22723, tmp_path / "analytics.log"),
    ]  # fmt: skip
    try:
        for proc in procs:
            proc.start()
        asyncio.run(replay(stager, data, "cdnow", tenant, timeout=900, say=print, triggers=triggers,
                           attribution=attribution))  # fmt: skip
        # the readouts attribution publishes reach the analytics side (its campaign table)
        asyncio.run(_readouts_arrive(stack, tenant))
    finally:
        for proc in procs:
            proc.stop()

    decisions, counters = asyncio.run(_decisions_and_counters(stack, tenant))
    ids = [d["trigger_id"] for d in decisions]
    assert len(set(ids)) == len(ids), "a trigger decision reached Kafka twice"
    orders = [(c, f"cdnow-{e.split(':')[1]}", t, amount, False) for c, e, t, amount in cdnow_orders(data)]
    expected = campaign_counts(decisions, orders)
    assert len(expected) >= 3 and set(counters) == set(expected)
    for campaign, by_group in expected.items():
        for group, measures in by_group.items():
            got = engine_figures(counters[campaign], group, measures)
            assert got == measures, f"{campaign} {group}"
    # no real outreach: an interval may miss zero only narrowly (by less than half its width)
    readouts = [readout(campaign, raw) for campaign, raw in counters.items()]
    effects = [(r.campaign_id, r.uplift, r.uplift_ci95) for r in readouts if r.uplift_ci95 is not None]
    assert effects
    print("\n".join(campaign_table(readouts)))
    for campaign, uplift, (low, high) in effects:
        margin = (high - low) / 4
        assert low - margin <= 0 <= high + margin, f"{campaign}: uplift {uplift:+.3f}, interval [{low}, {high}]"


async def _readouts_arrive(stack: StackInfo, tenant: str, timeout: float = 90) -> None:
    """Until the analytics side holds, for every campaign, the readout of attribution's counters."""
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            expected = {}
            for campaign, (said, counters) in (await campaign_counters(redis, tenant)).items():
                rule, _, days = said.rpartition("|")
                record = readout_record(tenant, campaign, counters, rule=rule, window_days=int(days), as_of=0)
                expected[campaign] = {k: record[k] for k in ("rule", "window_days", "all", "final")}
            shown = {
                k.decode(): json.loads(v)
                for shard in await tenant_shards(redis, tenant)
                for k, v in (await redis.hgetall(keys.campaign_results_key(tenant, shard))).items()
            }
            got = {c: {k: r[k] for k in ("rule", "window_days", "all", "final")} for c, r in shown.items()}
            if expected and got == expected:
                return
            if time.monotonic() > deadline:
                assert got == expected, "the analytics side's campaign readouts differ from attribution's counters"
            await asyncio.sleep(1.0)
    finally:
        await redis.aclose()


async def _unused_tenant(stack: StackInfo, stem: str) -> str:
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        n = 0
        while await tenant_shards(redis, f"{stem}-{n}"):
            n += 1
        return f"{stem}-{n}"
    finally:
        await redis.aclose()


async def _decisions_and_counters(
    stack: StackInfo, tenant: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """The tenant's trigger records (deliver_after in ms) and every campaign's counters."""
    decisions = []
    for topic in DECISIONS:
        async for r in read_topic(stack.kafka_bootstrap, topic, default_codec(), idle_timeout=2.0):
            if r.get("tenant") == tenant and "trigger_id" in r:  # not the triggers' progress
                decisions.append({**r, "deliver_after": int(r["deliver_after"].timestamp() * 1000)})
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        counters = {campaign: found for campaign, (_, found) in (await campaign_counters(redis, tenant)).items()}
        return decisions, counters
    finally:
        await redis.aclose()
