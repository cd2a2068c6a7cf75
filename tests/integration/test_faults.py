"""Outages ridden out on real data: during a paced replay of CDNOW, Redis, the broker, the
stager, the triggers, attribution and the analytics history worker are each killed with SIGKILL
and started again (as `crm stack up` or an orchestrator would). No manual step follows: the
replay finishes by itself, and the final stages, the stages at past instants, the decisions and
every campaign's counters equal the independent batch computations an undisturbed run equals
(tests/integration/test_determinism.py, test_attribution.py), and so do the analytics history's
counts now and at the past instants; no attribution record reaches Kafka twice."""

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from crm.localstack import LocalStack
from crm.pipeline import pipeline, wait_pipeline, wait_service
from crm.replay import replay
from services.analytics import query
from services.analytics.settings import AnalyticsSettings
from services.attribution.settings import AttributionSettings
from services.common.avro import default_codec
from services.common.constants import MAX_TIME_MS, TOPIC_ATTRIBUTION
from services.common.settings import CommonSettings
from services.common.tail import read_topic
from services.stager import analytics
from services.stager.rules import MODELS
from services.stager.settings import StagerSettings
from tests.conftest import StackInfo
from tests.integration.batch_attribution import campaign_counts, engine_figures
from tests.integration.batch_rules import cdnow_events, expected_counts
from tests.integration.batch_triggers import cdnow_orders, expected_decisions
from tests.integration.stager_process import (
    AnalyticsProcess,
    AttributionProcess,
    IngestProcess,
    StagerProcess,
    TriggersProcess,
    await_health,
)
from tests.integration.test_attribution import _decisions_and_counters
from tests.integration.test_determinism import CDNOW_SAMPLE, _outputs, _subset, _wait_triggers

PAST = (859852800000, 875664000000, 891388800000)  # 1997-04-01, 1997-10-01, 1998-04-01 (UTC)
RULES = {"first_purchase_gift", "repurchase_reminder", "winback_declining"}


def _kill(local: LocalStack, name: str) -> None:
    pid = int(local.pid_file(name).read_text())
    os.kill(pid, signal.SIGKILL)
    while True:  # reap it, so its port is free for the restart
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
        except ChildProcessError:
            break
        time.sleep(0.1)


async def _answers(
    stack: StackInfo, tenant: str
) -> tuple[dict[str, dict[str, int]], dict[tuple[str, int], dict[str, int]]]:
    redis = Redis.from_url(stack.redis_url)
    try:
        now = {m: await analytics.counts_now(redis, tenant, m) for m in MODELS}
        past = {(m, t): await analytics.counts_at(redis, tenant, m, t) for m in MODELS for t in PAST}
        return now, past
    finally:
        await redis.aclose()


async def _history_answers(
    stack: StackInfo, group: str, tenant: str, latest: int
) -> tuple[dict[str, dict[str, int]], dict[tuple[str, int], dict[str, int]]]:
    """The analytics history's counts now and at the past instants, once it has applied all."""
    settings = AnalyticsSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                 analytics_group=group)  # fmt: skip
    stager = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url)
    redis = Redis.from_url(stack.redis_url)
    try:
        service = pipeline(stager, analytics=settings)[-1]
        await wait_service(service, bootstrap=stack.kafka_bootstrap, redis=redis, tenant=tenant, latest_ms=latest,
                           timeout=300, partitions=12, say=print)  # fmt: skip

        async def counts(at: int) -> dict[str, dict[str, int]]:
            found = {m: await query.counts(redis, tenant, m, at, partitions=12) for m in MODELS}
            return {m: {s: n for s, n in c.items() if n} for m, c in found.items()}

        now = await counts(MAX_TIME_MS - 1)
        past = {(m, t): c for t in PAST for m, c in (await counts(t)).items()}
        return now, past
    finally:
        await redis.aclose()


@pytest.mark.timeout(1200)
def test_sigkill_of_redis_broker_and_workers_during_a_paced_replay_changes_no_answer(
    fault_stack: StackInfo, tmp_path: Path
) -> None:
    assert fault_stack.kind == "local", "the fault test kills the local stack's processes"
    local = LocalStack(cast(CommonSettings, fault_stack.settings))
    data = _subset(CDNOW_SAMPLE, 600, tmp_path / "cdnow-600.txt")
    run = uuid.uuid4().hex[:6]
    tenant, stager_group, triggers_group = f"fault-{run}", f"stager-fault-{run}", f"triggers-fault-{run}"
    stager = StagerProcess(fault_stack, stager_group, 22401, tmp_path / "stager.log")
    triggers = TriggersProcess(fault_stack, triggers_group, 22402, tmp_path / "triggers.log")
    ingest = IngestProcess(fault_stack, 22403, tmp_path / "ingest.log")
    attribution_group = f"attribution-fault-{run}"
    attribution = AttributionProcess(fault_stack, attribution_group, 22404, tmp_path / "attribution.log")
    history_group = f"analytics-fault-{run}"
    history = AnalyticsProcess(fault_stack, history_group, 22405, tmp_path / "analytics.log")
    workers, everyone = (22401, 22402, 22404, 22405), (22401, 22402, 22403, 22404, 22405)
    settings = StagerSettings(kafka_bootstrap=fault_stack.kafka_bootstrap, redis_url=fault_stack.redis_url,
                              stager_group=stager_group)  # fmt: skip
    outcome: dict[str, Any] = {}

    def replaying() -> None:
        try:
            outcome["report"] = asyncio.run(replay(settings, data, "cdnow", tenant, speed=1_000_000.0, timeout=900))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    stager.start()
    triggers.start()
    ingest.start()
    attribution.start()
    history.start()
    thread = threading.Thread(target=replaying)
    thread.start()
    health = {}
    try:
        time.sleep(6)
        _kill(local, "redis")
        health["redis down"] = await_health(workers, 503, within=20)
        time.sleep(1)
        local.up()  # what `crm stack up` does
        health["redis back"] = await_health(everyone, 200, within=90)
        time.sleep(4)
        _kill(local, "kafka")
        health["kafka down"] = await_health(everyone, 503, within=30)
        time.sleep(1)
        local.up()
        health["kafka back"] = await_health(everyone, 200, within=120)
        time.sleep(4)
        stager.kill()
        stager.start(timeout=120)
        time.sleep(4)
        triggers.kill()
        triggers.start(timeout=120)
        time.sleep(4)
        attribution.kill()
        attribution.start(timeout=120)
        time.sleep(2)
        history.kill()
        history.start(timeout=120)
        thread.join(timeout=900)
        assert not thread.is_alive(), "the replay did not finish"
        assert "error" not in outcome, f"the replay failed: {outcome.get('error')!r}"
        report = outcome["report"]
        asyncio.run(_wait_triggers(fault_stack, triggers_group, tenant, report.latest_ms))
        asyncio.run(_wait_attribution(fault_stack, attribution_group, tenant, report.latest_ms))
        now, past = asyncio.run(_answers(fault_stack, tenant))
        history_now, history_past = asyncio.run(_history_answers(fault_stack, history_group, tenant, report.latest_ms))
    finally:
        stager.stop()
        triggers.stop()
        ingest.stop()
        attribution.stop()
        history.stop()

    assert set(health["redis down"].values()) == {503}, health
    assert set(health["kafka down"].values()) == {503}, health
    assert set(health["redis back"].values()) == {200}, health
    assert set(health["kafka back"].values()) == {200}, health

    events = cdnow_events(data)
    expected_now = expected_counts(events)
    for model in MODELS:
        assert now[model] == expected_now.get(model, {}), model
        assert history_now[model] == expected_now.get(model, {}), f"analytics: {model}"
        for t in PAST:
            assert past[(model, t)] == expected_counts(events, t).get(model, {}), (model, t)
            assert history_past[(model, t)] == expected_counts(events, t).get(model, {}), f"analytics: {model} {t}"

    _, decisions = asyncio.run(_outputs(fault_stack.kafka_bootstrap, {tenant}))
    ids = [r["trigger_id"] for r in decisions[tenant]]
    assert len(ids) == len(set(ids)), "a decision reached Kafka twice"
    got = {
        r["trigger_id"]: (r["rule"], r["customer_id"], r["cause"], int(r["decided_at"].timestamp() * 1000),
                          int(r["deliver_after"].timestamp() * 1000), r["suppressed"])
        for r in decisions[tenant] if r["rule"] in RULES
    }  # fmt: skip
    expected = expected_decisions(data, tenant)
    missing = sorted(v for k, v in expected.items() if k not in got)[:5]
    extra = sorted(v for k, v in got.items() if k not in expected)[:5]
    assert got == expected, f"missing {missing}, extra {extra}"

    all_decisions, counters = asyncio.run(_decisions_and_counters(fault_stack, tenant))
    orders = [(c, f"cdnow-{e.split(':')[1]}", t, amount, False) for c, e, t, amount in cdnow_orders(data)]
    for campaign, by_group in campaign_counts(all_decisions, orders).items():
        for group, measures in by_group.items():
            figures = engine_figures(counters[campaign], group, measures)
            assert figures == measures, f"{campaign} {group}"
    records = asyncio.run(_attribution_ids(fault_stack.kafka_bootstrap, tenant))
    assert records and len(records) == len(set(records)), "an attribution record reached Kafka twice"


async def _wait_attribution(stack: StackInfo, group: str, tenant: str, latest: int) -> None:
    settings = AttributionSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                   attribution_group=group)  # fmt: skip
    only = [s for s in pipeline(StagerSettings(), None, settings) if s.name == "attribution"]
    redis = Redis.from_url(stack.redis_url)
    try:
        await wait_pipeline(only, bootstrap=stack.kafka_bootstrap, redis=redis, tenant=tenant, latest_ms=latest,
                            timeout=600, partitions=12, say=print)  # fmt: skip
    finally:
        await redis.aclose()


async def _attribution_ids(bootstrap: str, tenant: str) -> list[tuple[str, bool]]:
    return [(r["attribution_id"], r["retracted"]) async for r in read_topic(bootstrap, TOPIC_ATTRIBUTION,
            default_codec(), idle_timeout=2.0) if r.get("tenant") == tenant]  # fmt: skip
