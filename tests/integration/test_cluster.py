"""Scale-out on the cluster engines: three Kafka brokers (topics with three replicas, two in sync)
and a Redis Cluster of three masters with a replica each (`crm stack up --cluster`), two workers
of every stream service, each unit's batch in one slot.

Replays of CDNOW (600 customers) and Taobao (150 users) end with the stage counts, the stage
history and (CDNOW) the trigger decisions of the batch computation. A replay during which one
broker and then one Redis master are killed with SIGKILL (the master's replica takes over) and
brought back ends the same: counts and decisions equal the batch computation, no trigger id
twice, every event applied and none dead-lettered."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from crm.localstack import ClusterStack, _read_pid
from services.common import keys
from services.common.avro import default_codec
from services.common.constants import TOPIC_DLQ
from services.common.tail import read_topic
from tests.conftest import _OFFSET, CLUSTER_SETTINGS, StackInfo
from tests.integration.batch_rules import cdnow_events, expected_counts, taobao_events
from tests.integration.batch_triggers import CHANNELS, expected_decisions
from tests.integration.lookup import client, floors
from tests.integration.test_determinism import (
    CDNOW_SAMPLE,
    STAGER_INPUTS,
    _assert_history,
    _ends,
    _millis,
    _outputs,
    _run,
    _subset,
    _taobao_subset,
)
from tests.integration.test_stager_replay import assert_same, live_counts

PORT = 21500 + _OFFSET  # the workers' web ports: PORT..PORT+20


def _decided(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    ids = [r["trigger_id"] for r in records]
    assert len(ids) == len(set(ids)), "a decision appears twice on the trigger topics"
    return {
        r["trigger_id"]: (r["rule"], r["customer_id"], r["cause"], _millis(r["decided_at"]),
                          _millis(r["deliver_after"]), r["suppressed"])
        for r in records
    }  # fmt: skip


def _assert_cdnow(stack: StackInfo, data: Path, tenant: str) -> None:
    events = cdnow_events(data)
    assert_same(asyncio.run(live_counts(stack, tenant)), expected_counts(events))
    _, decisions = asyncio.run(_outputs(stack.kafka_bootstrap, {tenant}))
    got, expected = _decided(decisions[tenant]), expected_decisions(data, tenant, tuple(CHANNELS))
    missing = sorted(v for k, v in expected.items() if k not in got)[:5]
    assert got == expected, f"missing {missing}, extra {sorted(v for k, v in got.items() if k not in expected)[:5]}"


@pytest.mark.timeout(2400)
def test_cdnow_and_taobao_replays_on_the_cluster_equal_the_batch_computation(
    cluster_stack: StackInfo, tmp_path: Path
) -> None:
    data = _subset(CDNOW_SAMPLE, 600, tmp_path / "cdnow-600.txt")
    tenant = _run(cluster_stack, data, tmp_path, "cluster-cdnow", None, 500, 2, PORT)
    _assert_cdnow(cluster_stack, data, tenant)
    instants = [852_076_800_000 + k * 90 * 86_400_000 for k in range(6)]  # 1997-01-01, every 90 days
    _assert_history(cluster_stack, {"cdnow": tenant}, cdnow_events(data), instants)

    taobao = _taobao_subset(150, tmp_path / "taobao-150.csv")
    rules = tmp_path / "rules.json"
    rules.write_text('{"guardrails": {"holdout_share": 0, "global_holdout_share": 0}}')
    shopper = _run(cluster_stack, taobao, tmp_path, "cluster-taobao", None, 500, 2, PORT + 10, fmt="taobao",
                   env={"CRM_TRIGGER_RULES_FILE": str(rules)})  # fmt: skip
    events = taobao_events(taobao)
    assert_same(asyncio.run(live_counts(cluster_stack, shopper)), expected_counts(events))
    _, decisions = asyncio.run(_outputs(cluster_stack.kafka_bootstrap, {shopper}))
    assert {rule for rule, *_ in _decided(decisions[shopper]).values()} >= {"considering_coupon"}
    _assert_history(cluster_stack, {"taobao": shopper}, events, [1_511_611_200_000 + k * 86_400_000 for k in (0, 4, 8)])
    # every batch ran in one slot: each unit's keys carry its hash tag, and units spread over the masters
    assert _masters_holding(cluster_stack, f"crm:c:{{{tenant}:*") >= 2


def _masters_holding(stack: StackInfo, pattern: str) -> int:
    settings = cast(Any, stack.settings)
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    nodes = cast(dict[str, dict[str, Any]], redis.Redis(port=port).cluster("nodes"))
    held = 0
    for address, node in nodes.items():
        if "master" in node["flags"]:
            host, node_port = address.split(":")[:2]
            held += bool(list(redis.Redis(host=host, port=int(node_port.split("@")[0])).scan_iter(match=pattern)))
    return held


class _Faults(threading.Thread):
    """Once `started()` says so, kill and bring back cluster processes at set times after, noting
    what it did."""

    def __init__(self, started: Callable[[], bool], steps: list[tuple[float, Callable[[], str]]]) -> None:
        super().__init__(daemon=True)
        self.started, self.steps, self.done, self.failed = started, steps, [], []  # type: ignore[var-annotated]

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while not self.started() and time.monotonic() < deadline:
            time.sleep(0.2)
        began = time.monotonic()
        for at, step in self.steps:
            time.sleep(max(0.0, began + at - time.monotonic()))
            try:
                self.done.append(step())
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.failed.append(repr(exc))


def _kill(local: ClusterStack, name: str) -> str:
    pid = _read_pid(local.pid_file(name))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return f"killed {name}"


def _master(local: ClusterStack) -> str:
    """The node name (redis-N) of a Redis master of the cluster."""
    nodes = cast(dict[str, dict[str, Any]], redis.Redis(port=local.redis_ports[0]).cluster("nodes"))
    for address, node in sorted(nodes.items()):
        if "master" in node["flags"] and "fail" not in node["flags"]:
            port = int(address.split(":")[1].split("@")[0])
            return f"redis-{local.redis_ports.index(port) + 1}"
    raise AssertionError("no master")


def _restart(local: ClusterStack, what: str) -> Callable[[], str]:
    def step() -> str:
        (local._start_kafka if what == "kafka" else local._start_redis)()
        local.wait_ready(180)
        return f"restarted {what}"

    return step


@pytest.mark.timeout(2400)
def test_a_broker_and_a_redis_master_killed_mid_replay_change_nothing(cluster_stack: StackInfo, tmp_path: Path) -> None:
    local = ClusterStack(CLUSTER_SETTINGS, say=print)
    data = _subset(CDNOW_SAMPLE, 600, tmp_path / "cdnow-600.txt")
    master: list[str] = []

    def kill_master() -> str:
        master.append(_master(local))
        return _kill(local, master[0])

    def applying() -> bool:  # the stager applied the replay's first events
        node = redis.RedisCluster(host="127.0.0.1", port=local.redis_ports[0])
        try:
            return any(
                t.startswith(b"det-cluster-faults-") for t in cast(set[bytes], node.smembers(keys.tenants_key()))
            )
        finally:
            node.close()

    faults = _Faults(applying, [
        (3, lambda: _kill(local, "kafka-2")),
        (15, _restart(local, "kafka")),
        (25, kill_master),
        (40, _restart(local, "redis")),
    ])  # fmt: skip
    faults.start()
    tenant = _run(cluster_stack, data, tmp_path, "cluster-faults", 300_000.0, 500, 2, PORT)
    # every fault happened before the pipeline had applied the replay (it waits for that)
    assert faults.failed == [] and len(faults.done) == 4, (faults.done, faults.failed)
    faults.join(10)
    _assert_cdnow(cluster_stack, data, tenant)
    # every event on the stager's inputs applied (the floors reached the ends), none dead-lettered
    ends = asyncio.run(_ends(cluster_stack.kafka_bootstrap, STAGER_INPUTS))
    applied = asyncio.run(_floors(cluster_stack, f"stager-cluster-faults-{tenant.rsplit('-', 1)[1]}"))
    assert all(applied.get(tp, 0) >= end for tp, end in ends.items()), "events accepted but not applied"
    assert asyncio.run(_dead_letters(cluster_stack, tenant)) == 0


async def _floors(stack: StackInfo, group: str) -> dict[str, int]:
    redis_client = client(stack)
    try:
        return await floors(redis_client, group)
    finally:
        await redis_client.aclose()


async def _dead_letters(stack: StackInfo, tenant: str) -> int:
    found = 0
    async for record in read_topic(stack.kafka_bootstrap, TOPIC_DLQ, default_codec(), idle_timeout=2.0):
        found += tenant.encode() in record["original"]
    return found
