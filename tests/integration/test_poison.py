"""No input stops a worker: on every input topic of the stager, the triggers and attribution, valid canaries
mixed with garbage, nulls, records of the wrong schema, truncated records and values the state
cannot hold. Every canary is applied, every bad record is dead-lettered once with its topic,
partition and offset, and the workers stay alive, also across a SIGKILL and a restart.

On a stack of its own, so the new consumer groups read only what this test produced."""

import asyncio
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.analytics.app import SOURCE_TOPICS as ANALYTICS_SOURCES
from services.attribution.app import SOURCE_TOPICS as ATTRIBUTION_SOURCES
from services.common import keys
from services.common.avro import Codec, default_codec
from services.common.constants import (
    MAX_TIME_MS,
    TOPIC_CAMPAIGN_REQUESTS,
    TOPIC_DLQ,
    TOPIC_REFERRALS,
    TOPIC_STAGE_TRANSITIONS,
    TOPIC_TRIGGERS_SUPPRESSED,
    event_topic,
)
from services.common.tail import read_topic
from services.triggers.app import SOURCE_TOPICS as TRIGGERS_SOURCES
from tests.conftest import StackInfo
from tests.integration.lookup import floors, state_of
from tests.integration.stager_process import AnalyticsProcess, AttributionProcess, StagerProcess, TriggersProcess
from tests.integration.test_determinism import start_at_end

T0 = 1_700_000_000_000
STAGER_TOPICS = {event_topic(t) for t in ("browse", "cart", "follow", "order")} | {TOPIC_REFERRALS}
LABELS: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> what the bad record is
OUT_OF_RANGE = {
    "time before 1970",
    "negative amount",
    "amount not finite",
    "progress beyond any time",
    "progress of a tenant with a control character",
}
TRIGGER_TOPICS = set(TRIGGERS_SOURCES)
ATTRIBUTION_TOPICS = set(ATTRIBUTION_SOURCES)
ANALYTICS_TOPICS = set(ANALYTICS_SOURCES)
READERS = {"stager": STAGER_TOPICS, "triggers": TRIGGER_TOPICS, "attribution": ATTRIBUTION_TOPICS,
           "analytics": ANALYTICS_TOPICS}  # fmt: skip


def _valid(topic: str, tenant: str, customer: str, n: int, **override: Any) -> tuple[str, dict[str, Any]]:
    """(schema, record) of a valid record for `topic`."""
    base = {"event_id": f"{tenant}-{customer}-{n}", "customer_id": customer, "tenant": tenant, "event_time": T0 + n}
    if topic == event_topic("browse"):
        return "crm.events.Browse", {**base, "product_id": "p1", **override}
    if topic == event_topic("cart"):
        return "crm.events.Cart", {**base, "action": "add", "product_id": "p1", **override}
    if topic == event_topic("follow"):
        return "crm.events.Follow", {**base, "target_type": "brand", "target_id": "b", **override}
    if topic == event_topic("order"):
        return "crm.events.Order", {**base, "order_id": f"o-{n}", "status": "paid", "amount": 10.0, **override}
    if topic == event_topic("profile"):
        return "crm.events.Profile", {**base, "consent": {"sms": True}, "city": "Hangzhou", **override}
    if topic == TOPIC_CAMPAIGN_REQUESTS:
        record = {"request_id": base["event_id"], "tenant": tenant, "customer_id": customer, "campaign_id": "md",
                  "run_at": base["event_time"], "action": "member_day_coupon", "channel": "sms", "topic": "coupons",
                  "offer": None, "quiet_hours": "defer", **override}  # fmt: skip
        if "event_time" in record:
            record["run_at"] = record.pop("event_time")
        return "crm.campaigns.Request", record
    if topic == TOPIC_REFERRALS:
        return "crm.stage.ReferralCredit", {**base, "referred_customer_id": "x", **override}
    at = override.pop("event_time", T0 + n)
    if topic.startswith("crm.triggers."):
        held = topic.endswith(".suppressed")
        record = {"trigger_id": f"t-{tenant}-{customer}-{n}", "tenant": tenant, "customer_id": customer,
                  "rule": "welcome", "campaign_id": "welcome", "action": "coupon", "channel": "sms", "offer": None,
                  "cause": base["event_id"], "decided_at": at, "deliver_after": at,
                  "suppressed": "holdout" if held else None}  # fmt: skip
        return "crm.triggers.Trigger", record
    record = {"transition_id": f"tr-{tenant}-{customer}-{n}", "tenant": tenant, "customer_id": customer,
              "model": "pyramid", "from_stage": None, "to_stage": "aware", "at": at,
              "cause": base["event_id"]}  # fmt: skip
    return "crm.stage.StageTransition", record


def _bad(codec: Codec, topic: str, tenant: str, n: int) -> list[tuple[str, bytes | None, set[str]]]:
    """(label, value, readers that must refuse it) of each bad record for `topic`."""
    readers = {reader for reader, topics in READERS.items() if topic in topics}
    good = codec.encode(*_valid(topic, tenant, "bad", n))
    other = event_topic("browse") if topic == event_topic("order") else event_topic("order")
    out: list[tuple[str, bytes | None, set[str]]] = [
        ("garbage", b"\x00\x01 this is not avro", readers),
        ("null", None, readers),
        ("wrong schema", codec.encode(*_valid(other, tenant, "bad", n + 1)), readers),
        # cut inside the leading fields every reader needs (the hot paths decode only those)
        ("truncated", good[:14], readers),
        ("time before 1970", codec.encode(*_valid(topic, tenant, "bad", n + 2, event_time=-5)), readers),
    ]
    if topic in (TOPIC_STAGE_TRANSITIONS, TOPIC_TRIGGERS_SUPPRESSED, TOPIC_CAMPAIGN_REQUESTS):  # no clock holds

        def progress(who: str, watermark: int) -> bytes:
            return codec.encode("crm.stage.Progress", {"tenant": who, "partition": 0, "watermark": watermark,
                                                       "source": "poison"})  # fmt: skip

        out.append(("progress beyond any time", progress(tenant, MAX_TIME_MS), readers))
        out.append(("progress of a tenant with a control character", progress(f"{tenant}\x01", T0), readers))
    if topic == event_topic("order"):  # both services refuse what the state cannot hold
        negative = codec.encode(*_valid(topic, tenant, "bad", n + 3, amount=-0.01))
        out.append(("negative amount", negative, readers))
        not_finite = codec.encode(*_valid(topic, tenant, "bad", n + 4, amount=float("nan")))
        out.append(("amount not finite", not_finite, readers))
    return out


async def _produce(
    bootstrap: str, tenant: str, round_no: int
) -> tuple[dict[str, set[str]], dict[str, set[tuple[str, int, int]]], dict[tuple[str, int], int]]:
    """Canaries and bad records on every input topic; (canaries per reader, expected dead letters
    per reader as {(topic, partition, offset)}, last offset per topic-partition)."""
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    canaries: dict[str, set[str]] = {reader: set() for reader in READERS}
    dead: dict[str, set[tuple[str, int, int]]] = {reader: set() for reader in READERS}
    ends: dict[tuple[str, int], int] = {}
    try:
        for i, topic in enumerate(sorted(STAGER_TOPICS | TRIGGER_TOPICS | ATTRIBUTION_TOPICS)):
            for j in range(3):
                customer = f"canary-{round_no}-{i}-{j}"
                meta = await producer.send_and_wait(
                    topic, codec.encode(*_valid(topic, tenant, customer, 100 * i + j)), key=customer.encode()
                )
                ends[(topic, meta.partition)] = meta.offset + 1
                for reader, topics in READERS.items():
                    if topic in topics:
                        canaries[reader].add(customer)
                for label, value, readers in _bad(codec, topic, tenant, 1000 * (i + 1) + 10 * j):
                    meta = await producer.send_and_wait(topic, value, key=f"bad-{j}".encode())
                    ends[(topic, meta.partition)] = max(ends.get((topic, meta.partition), 0), meta.offset + 1)
                    LABELS[(topic, meta.partition, meta.offset)] = label
                    for reader in readers:
                        dead[reader].add((topic, meta.partition, meta.offset))
    finally:
        await producer.stop()
    return canaries, dead, ends


async def _wait_applied(
    redis_url: str, groups: Mapping[str, Collection[str]], ends: Mapping[tuple[str, int], int], timeout: float = 120
) -> None:
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            behind = 0
            for group, topics in groups.items():
                fence = await floors(redis, group)
                behind += sum(1 for (t, p), end in ends.items() if t in topics and fence.get(f"{t}:{p}", 0) < end)
            if behind == 0:
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"{behind} partitions not applied within {timeout}s")
    finally:
        await redis.aclose()


async def _with_ids(redis_url: str, tenant: str, customers: Iterable[str]) -> set[str]:
    redis = Redis.from_url(redis_url)
    try:
        held: set[str] = set()
        for shard in range(12):
            found = cast(list[bytes], await redis.hkeys(keys.customer_ids_key(tenant, shard)))
            held |= {c.decode() for c in found}
        return held & set(customers)
    finally:
        await redis.aclose()


async def _states(
    redis_url: str, tenant: str, customers: Iterable[str], key: Callable[[str, int, str], str]
) -> set[str]:
    redis = Redis.from_url(redis_url)
    try:
        return {c for c in customers if await state_of(redis, key, tenant, c) is not None}
    finally:
        await redis.aclose()


async def _dead_letters(bootstrap: str, source: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for record in read_topic(bootstrap, TOPIC_DLQ, default_codec(), idle_timeout=1.0):
        if record.get("source") == source:
            out.append(record)
    return out


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        return cast(int, reply.status) == 200


@pytest.mark.timeout(600)
def test_bad_records_on_every_input_topic_are_dead_lettered_once_and_the_rest_flows(
    quiet_stack: StackInfo, tmp_path: Path
) -> None:
    stack = quiet_stack
    run = uuid.uuid4().hex[:8]
    tenant = f"poison-{run}"
    stager_group, triggers_group, attribution_group = f"stager-{run}", f"triggers-{run}", f"attribution-{run}"
    analytics_group = f"analytics-{run}"
    groups = {stager_group: STAGER_TOPICS, triggers_group: TRIGGER_TOPICS, attribution_group: ATTRIBUTION_TOPICS,
              analytics_group: ANALYTICS_TOPICS}  # fmt: skip
    workers = [
        StagerProcess(stack, stager_group, 22167, tmp_path / "stager.log"),
        TriggersProcess(stack, triggers_group, 22168, tmp_path / "triggers.log"),
        AttributionProcess(stack, attribution_group, 22169, tmp_path / "attribution.log"),
        AnalyticsProcess(stack, analytics_group, 22170, tmp_path / "analytics.log"),
    ]
    # the new groups start at the current end of their topics, not at what other tests left there
    for group, topics in groups.items():
        asyncio.run(start_at_end(stack, group, tuple(topics)))
    canaries, dead, ends = asyncio.run(_produce(stack.kafka_bootstrap, tenant, 1))
    for worker in workers:
        worker.start()
    try:
        asyncio.run(_wait_applied(stack.redis_url, groups, ends))
        assert all(cast("subprocess.Popen[bytes]", w.proc).poll() is None for w in workers)
        for worker in workers:  # a crash: no shutdown, no final commit
            worker.kill()
        more_canaries, more_dead, more_ends = asyncio.run(_produce(stack.kafka_bootstrap, tenant, 2))
        for worker in workers:
            worker.start()
        asyncio.run(_wait_applied(stack.redis_url, groups, {**ends, **more_ends}))
        assert _healthy(22167) and _healthy(22168) and _healthy(22169) and _healthy(22170)
    finally:
        for worker in workers:
            worker.stop()

    for reader, key, group in (
        ("stager", keys.customer_key, stager_group),
        ("triggers", keys.trigger_state_key, triggers_group),
        ("attribution", keys.attribution_state_key, attribution_group),
        ("analytics", None, analytics_group),
    ):
        wanted = canaries[reader] | more_canaries[reader]
        if key is None:  # the history gives every customer it applied a dense id of its shard
            assert asyncio.run(_with_ids(stack.redis_url, tenant, wanted)) == wanted, reader
        else:
            assert asyncio.run(_states(stack.redis_url, tenant, wanted, key)) == wanted, reader
        letters = asyncio.run(_dead_letters(stack.kafka_bootstrap, f"{reader}:{group}"))
        positions = [(r["topic"], r["partition"], r["offset"]) for r in letters]
        expected = dead[reader] | more_dead[reader]
        assert len(positions) == len(set(positions)), f"{reader}: a position dead-lettered twice"
        missing = sorted((p, LABELS[p]) for p in expected - set(positions))
        assert set(positions) == expected, f"{reader}: missing {missing}, extra {set(positions) - expected}"
        for r in letters:  # what does not decode, and what decodes but no state can hold
            refused = LABELS[(r["topic"], r["partition"], r["offset"])] in OUT_OF_RANGE
            assert r["reason"].startswith("invalid: out of range" if refused else "undecodable: "), r["reason"]
