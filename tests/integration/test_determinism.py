"""Same data, same answers: CDNOW (600 customers of its sample) replayed at full speed, at a
paced speed, with batches of 1, 100 and 5,000 messages and with two workers of each service
gives the same stage transitions and the same trigger decisions; the decisions (of every rule
that fires on this data, the repurchase-reminder, win-back and first-purchase rules among them)
equal an independent batch computation of the rule table.

Each configuration replays under a tenant of its own (the ids are hashes that include the
tenant, so transitions are compared by what they say, and decisions against the reference
computed for that tenant). On a stack of its own."""

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from crm.replay import replay
from services.analytics import query
from services.analytics.app import SOURCE_TOPICS as ANALYTICS_SOURCES
from services.analytics.audience import parse
from services.analytics.settings import AnalyticsSettings
from services.common import keys
from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_REFERRALS,
    TOPIC_STAGE_TRANSITIONS,
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
    event_topic,
)
from services.common.tail import read_topic
from services.stager.rules import MODELS
from services.stager.settings import StagerSettings
from services.triggers.app import SOURCE_TOPICS as TRIGGERS_SOURCES
from services.triggers.engine import CLOCK as TRIGGERS_CLOCK
from services.triggers.settings import TriggerSettings
from tests.conftest import StackInfo
from tests.integration.batch_rules import (
    browsed,
    cdnow_events,
    expected_counts,
    expected_flow,
    expected_stages,
    paid_counts,
    taobao_browses,
    taobao_events,
)
from tests.integration.batch_triggers import CHANNELS, expected_decisions
from tests.integration.lookup import client, clock_of, cluster_settings, floors, set_floors
from tests.integration.stager_process import AnalyticsProcess, StagerProcess, TriggersProcess, WorkerProcess

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CDNOW_SAMPLE = DATA / "cdnow" / "CDNOW_sample.txt"
DECISIONS = (TOPIC_TRIGGERS_COUPONS, TOPIC_TRIGGERS_REMINDERS, TOPIC_TRIGGERS_OUTREACH, TOPIC_TRIGGERS_SUPPRESSED)
TRIGGER_INPUTS = TRIGGERS_SOURCES
HISTORY_INPUTS = ANALYTICS_SOURCES
STAGER_INPUTS = (*(event_topic(t) for t in ("browse", "cart", "order", "follow")), TOPIC_REFERRALS)
# name -> (event seconds per wall second or None for full speed, batch size, workers of each service)
RUNS = {
    "max": (None, 2000, 1),
    "paced": (3_000_000.0, 2000, 1),
    "batch-1": (None, 1, 1),
    "batch-100": (None, 100, 1),
    "batch-5000": (None, 5000, 1),
    "two-workers": (None, 500, 2),
}


async def _ends(bootstrap: str, topics: Iterable[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return {f"{tp.topic}:{tp.partition}": end for tp, end in (await consumer.end_offsets(
            [TopicPartition(t, p) for t in topics for p in range(12)])).items()}  # fmt: skip
    finally:
        await consumer.stop()


async def _wait_triggers(stack: StackInfo, group: str, tenant: str, latest: int, timeout: float = 600) -> None:
    """Until the triggers applied every message on their topics, their clock for `tenant`
    stands at `latest` and no timer of the tenant is due by then."""
    redis = client(stack)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ends = await _ends(stack.kafka_bootstrap, TRIGGER_INPUTS)
            fence = await floors(redis, group)
            behind = sum(max(0, end - fence.get(tp, 0)) for tp, end in ends.items())
            _, watermark = await clock_of(redis, TRIGGERS_CLOCK, tenant)
            due = 0
            for shard in range(12):
                due += await redis.zcount(keys.trigger_timers_key(tenant, shard), "-inf", watermark)
            if behind == 0 and watermark >= latest and due == 0:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"the triggers did not finish: {behind} behind, watermark {watermark} < {latest}")
    finally:
        await redis.aclose()


def _subset(path: Path, customers: int, out: Path) -> Path:
    """The lines of the first `customers` customers of a CDNOW file."""
    kept: set[str] = set()
    lines: list[str] = []
    for line in path.read_text().splitlines(keepends=True):
        who = line.split()[0]
        if who in kept or len(kept) < customers:
            kept.add(who)
            lines.append(line)
    out.write_text("".join(lines))
    return out


async def start_at_end(stack: StackInfo, group: str, topics: Iterable[str]) -> None:
    """Start `group` at the current end of `topics` (its applied-offset fence, which the workers
    seek to), so it does not first read what earlier runs left there."""
    redis = client(stack)
    try:
        ends: dict[Any, Any] = {tp: end for tp, end in (await _ends(stack.kafka_bootstrap, topics)).items() if end}
        if ends:
            await set_floors(redis, group, ends)
    finally:
        await redis.aclose()


def _run(
    stack: StackInfo,
    data: Path,
    tmp_path: Path,
    name: str,
    speed: float | None,
    batch: int,
    workers: int,
    port: int,
    fmt: str = "cdnow",
    env: Mapping[str, str] | None = None,
) -> str:
    """Replay `data` under a new tenant with new worker groups; returns the tenant."""
    run = uuid.uuid4().hex[:6]
    tenant, stager_group, triggers_group = f"det-{name}-{run}", f"stager-{name}-{run}", f"triggers-{name}-{run}"
    history_group = f"history-{name}-{run}"
    env = {"CRM_BATCH_MAX": str(batch), **(env or {})}
    asyncio.run(start_at_end(stack, stager_group, STAGER_INPUTS))
    asyncio.run(start_at_end(stack, triggers_group, TRIGGER_INPUTS))
    asyncio.run(start_at_end(stack, history_group, HISTORY_INPUTS))
    procs: list[WorkerProcess] = []
    for i in range(workers):
        procs.append(StagerProcess(stack, stager_group, port + 2 * i, tmp_path / f"{name}-stager{i}.log", env))
        procs.append(TriggersProcess(stack, triggers_group, port + 2 * i + 1, tmp_path / f"{name}-trg{i}.log", env))
        procs.append(AnalyticsProcess(stack, history_group, port + 6 + i, tmp_path / f"{name}-hist{i}.log", env))
    try:
        for proc in procs:
            proc.start()
        where = {"kafka_bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url, **cluster_settings(stack)}
        settings = StagerSettings(**where, stager_group=stager_group)
        triggers = TriggerSettings(**where, triggers_group=triggers_group)
        # returns once both services applied everything and fired what was due (crm.pipeline)
        history = AnalyticsSettings(**where, analytics_group=history_group)
        asyncio.run(replay(settings, data, fmt, tenant, speed=speed, timeout=600, say=print, triggers=triggers,
                           analytics=history))  # fmt: skip
    finally:
        for proc in procs:
            proc.stop()
    return tenant


async def _outputs(
    bootstrap: str, tenants: Collection[str], with_ids: bool = False
) -> tuple[defaultdict[str, set[tuple[Any, ...]]], defaultdict[str, list[dict[str, Any]]]]:
    codec = default_codec()
    transitions: defaultdict[str, set[tuple[Any, ...]]] = defaultdict(set)
    async for r in read_topic(bootstrap, TOPIC_STAGE_TRANSITIONS, codec, idle_timeout=2.0):
        if r.get("tenant") in tenants and "transition_id" in r:
            said = (r["customer_id"], r["model"], r["from_stage"], r["to_stage"], _millis(r["at"]), r["cause"])
            transitions[r["tenant"]].add((*said, r["transition_id"]) if with_ids else said)
    decisions: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic in DECISIONS:
        async for r in read_topic(bootstrap, topic, codec, idle_timeout=2.0):
            if r.get("tenant") in tenants and "trigger_id" in r:  # not the triggers' progress
                decisions[r["tenant"]].append(r)
    return transitions, decisions


def _millis(value: Any) -> int:
    return int(value.timestamp() * 1000)


@pytest.mark.timeout(1800)
def test_replays_at_any_pace_batch_size_and_worker_count_give_the_same_transitions_and_decisions(
    quiet_stack: StackInfo, tmp_path: Path
) -> None:
    data = _subset(CDNOW_SAMPLE, 600, tmp_path / "cdnow-600.txt")
    tenants = {}
    for i, (name, (speed, batch, workers)) in enumerate(RUNS.items()):
        tenants[name] = _run(quiet_stack, data, tmp_path, name, speed, batch, workers, 22300 + 10 * i)
    transitions, decisions = asyncio.run(_outputs(quiet_stack.kafka_bootstrap, set(tenants.values())))

    first = transitions[tenants["max"]]
    assert len(first) > 5_000
    for name, tenant in tenants.items():
        assert transitions[tenant] == first, f"{name}: transitions differ from the full-speed run"

    for name, tenant in tenants.items():
        records = decisions[tenant]
        ids = [r["trigger_id"] for r in records]
        assert len(ids) == len(set(ids)), f"{name}: a decision appears twice"
        # every rule that fires on purchase-only data (the caps couple them), not only the three
        expected = expected_decisions(data, tenant, tuple(CHANNELS))
        got = {
            r["trigger_id"]: (r["rule"], r["customer_id"], r["cause"], _millis(r["decided_at"]),
                              _millis(r["deliver_after"]), r["suppressed"])
            for r in records
        }  # fmt: skip
        missing = sorted(v for k, v in expected.items() if k not in got)[:5]
        extra = sorted(v for k, v in got.items() if k not in expected)[:5]
        assert got == expected, f"{name}: missing {missing}, extra {extra}"
        assert {r for r, *_ in got.values()} >= {"first_purchase_gift", "repurchase_reminder", "winback_declining"}

    # the stage history kept by the analytics workers: at any instant, and between two, the
    # answers of the batch computation, whatever the pace, batch size or number of workers
    instants = [852_076_800_000 + k * 45 * 86_400_000 for k in range(12)]  # 1997-01-01, every 45 days
    events = cdnow_events(data)
    _assert_history(quiet_stack, tenants, events, instants)
    # behaviour terms of audiences, at instants inside a day (07:00) whose windows start within
    # the 400 days kept back from the last day closed (1998-06)
    audiences = {}
    for at in (t + 7 * 3_600_000 for t in instants[8:]):
        paid = {days: paid_counts(events, at, days) for days in (30, 90, 180)}
        declining = {c for c, s in expected_stages(events, at)["lifecycle"].items() if s == "declining"}
        audiences[at] = {
            "paid_orders_30d >= 1": set(paid[30]),
            "paid_orders_180d >= 3": {c for c, n in paid[180].items() if n >= 3},
            "paid_orders_90d = 1": {c for c, n in paid[90].items() if n == 1},
            "paid_orders_180d > 1 & lifecycle:declining": {c for c, n in paid[180].items() if n > 1} & declining,
        }
    _assert_audiences(quiet_stack, tenants, audiences)


def _assert_history(
    stack: StackInfo, tenants: Mapping[str, str], events: Mapping[str, list[Any]], instants: list[int]
) -> None:
    """Every run's analytics history answers as the batch computation at each instant (counts)
    and from each instant to the third after it (flows)."""
    for name, tenant in tenants.items():
        counts, flows = asyncio.run(_history(stack, tenant, instants))
        for at, at_counts in zip(instants, counts, strict=True):
            wanted = expected_counts(events, at)
            assert {m: {s: n for s, n in c.items() if n} for m, c in at_counts.items()} == {
                m: wanted.get(m, {}) for m in MODELS
            }, f"{name}: counts at {at}"
        for (t0, t1), found_flow in zip(zip(instants, instants[3:], strict=False), flows, strict=True):
            for model in MODELS:
                moved = {f"{a}->{b}": n for (a, b), n in found_flow[model].items() if a != b}
                assert moved == expected_flow(events, model, t0, t1), f"{name}: {model} flow {t0}..{t1}"


def _assert_audiences(stack: StackInfo, tenants: Mapping[str, str], wanted: dict[int, dict[str, set[str]]]) -> None:
    """Every run's audiences at each instant are the customers the batch computation names."""
    for name, tenant in tenants.items():
        for at, expressions in wanted.items():
            for text, customers in expressions.items():
                found = asyncio.run(_audience(stack, tenant, at, text))
                assert found == customers, f"{name}: {text} at {at}: {len(found)} found, {len(customers)} wanted"
    assert any(c for e in wanted.values() for c in e.values())


async def _audience(stack: StackInfo, tenant: str, at: int, text: str) -> set[str]:
    redis = client(stack)
    try:
        audiences = query.Audiences(redis, tenant, at, 12)
        out: set[str] = set()
        for shard, ids in zip(audiences.shards, await audiences.members(parse(text)), strict=True):
            out.update(n for n in await audiences.names(shard, list(ids)) if n is not None)
        return out
    finally:
        await redis.aclose()


async def _history(
    stack: StackInfo, tenant: str, instants: list[int]
) -> tuple[list[dict[str, dict[str, int]]], list[dict[str, dict[tuple[str, str], int]]]]:
    """Counts of every model at each instant, and flows from each instant to the third after it."""
    redis = client(stack)
    try:
        counts = [{m: await query.counts(redis, tenant, m, at, partitions=12) for m in MODELS} for at in instants]
        flows = [
            {m: (await query.flow(redis, tenant, m, t0, t1, partitions=12)).cells for m in MODELS}
            for t0, t1 in zip(instants, instants[3:], strict=False)
        ]
        return counts, flows
    finally:
        await redis.aclose()


TAOBAO = DATA / "taobao_userbehavior" / "UserBehavior_by_user.csv"
TAOBAO_RUNS = {
    "max": (None, 2000, 1),
    "paced": (60_000.0, 2000, 1),
    "small-batches-two-workers": (None, 7, 2),
}


def _taobao_subset(users: int, out: Path) -> Path:
    """The complete histories of the first `users` users of the Taobao sample (grouped by user)."""
    kept: set[str] = set()
    lines: list[str] = []
    for line in TAOBAO.read_text().splitlines(keepends=True):
        who = line.split(",", 1)[0]
        if who not in kept and len(kept) == users:
            break
        kept.add(who)
        lines.append(line)
    out.write_text("".join(lines))
    return out


def _normalised(decisions: Iterable[dict[str, Any]], transitions: Iterable[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Decisions as what they say, with a transition cause replaced by the transition it names."""
    by_id: dict[str, tuple[str, str, str]] = {}
    for customer, model, _from, _to, _at, cause, transition_id in transitions:
        by_id[transition_id] = (customer, model, cause)
    out: set[tuple[Any, ...]] = set()
    for r in decisions:
        cause = r["cause"]
        if cause.startswith("transition:"):
            cause = by_id[cause.removeprefix("transition:")]
        out.add((r["rule"], r["customer_id"], cause, _millis(r["decided_at"]), _millis(r["deliver_after"]),
                 r["suppressed"]))  # fmt: skip
    return out


@pytest.mark.timeout(1800)
def test_taobao_browsing_carts_and_orders_give_the_same_answers_at_any_pace_and_batch_size(
    quiet_stack: StackInfo, tmp_path: Path
) -> None:
    """Several input topics read at different paces: browse, cart, follow and order events of
    the same customers, and the transitions they cause. No control groups here, so decisions of
    different tenants can be compared."""
    data = _taobao_subset(150, tmp_path / "taobao-150.csv")
    rules = tmp_path / "rules.json"
    rules.write_text('{"guardrails": {"holdout_share": 0, "global_holdout_share": 0}}')
    tenants = {}
    for i, (name, (speed, batch, workers)) in enumerate(TAOBAO_RUNS.items()):
        tenants[name] = _run(quiet_stack, data, tmp_path, name, speed, batch, workers, 22500 + 10 * i,
                             fmt="taobao", env={"CRM_TRIGGER_RULES_FILE": str(rules)})  # fmt: skip
    transitions, decisions = asyncio.run(_outputs(quiet_stack.kafka_bootstrap, set(tenants.values()), with_ids=True))
    said = {name: {t[:6] for t in transitions[tenant]} for name, tenant in tenants.items()}
    assert len(said["max"]) > 5_000
    made = {name: _normalised(decisions[tenant], transitions[tenant]) for name, tenant in tenants.items()}
    assert {rule for rule, *_ in made["max"]} >= {"considering_coupon", "abandoned_cart_reminder"}
    for name in tenants:
        assert said[name] == said["max"], f"{name}: transitions differ from the full-speed run"
        assert made[name] == made["max"], f"{name}: decisions differ from the full-speed run"
    # 2017-11-25 12:00Z, daily to 12-03: within the data (past its end no clock runs on, while the
    # batch computation would let the sessions of the shopping path time out)
    instants = [1_511_611_200_000 + k * 86_400_000 for k in range(9)]
    events = taobao_events(data)
    _assert_history(quiet_stack, tenants, events, instants)
    views = taobao_browses(data)
    popular = Counter(k for evs in views.values() for _, k in evs).most_common(2)
    audiences = {at: {
        "paid_orders_2d >= 1": set(paid_counts(events, at, 2)),
        "paid_orders_9d > 1": {c for c, n in paid_counts(events, at, 9).items() if n > 1},
        **{f"category:{k} browsed {d}d": browsed(views, k, at, d) for k, _ in popular for d in (1, 3)},
    } for at in instants[::2]}  # fmt: skip
    _assert_audiences(quiet_stack, tenants, audiences)
