"""The local stack: real broker and Redis, idempotent start, topics from the table."""

import asyncio
from pathlib import Path
from typing import cast

import redis

from crm.localstack import LocalStack
from services.common.constants import TOPICS
from services.common.settings import CommonSettings
from services.common.tail import topic_partitions
from services.common.topics import ensure_topics
from tests.conftest import StackInfo


def test_up_twice_keeps_the_same_processes_and_down_stops_them(tmp_path: Path) -> None:
    """On a stack of its own (own ports and folder), whatever stack the session uses."""
    settings = CommonSettings(
        kafka_bootstrap="127.0.0.1:24592", redis_url="redis://127.0.0.1:24879/0", state_dir=tmp_path / "state"
    )
    local = LocalStack(settings, say=lambda _: None)
    try:
        local.up()
        before = local.status()
        assert before["kafka"].startswith("running") and before["redis"].startswith("running")
        local.up()
        assert local.status() == before
    finally:
        stopped = local.down()
    assert set(stopped) == {"kafka", "redis"}
    assert not local.kafka_ready() and not local.redis_ready()


def test_redis_runs_with_aof_every_second_on_its_own_port(stack: StackInfo) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    assert client.ping()
    if stack.kind == "local":
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "1024"}
        assert client.config_get("port") == {"port": stack.redis_url.rsplit(":", 1)[1].split("/")[0]}
        assert cast(str, client.config_get("dir")["dir"]).startswith(
            str(cast(CommonSettings, stack.settings).state_dir)
        )


def test_every_topic_of_the_table_exists_with_12_partitions(stack: StackInfo) -> None:
    for spec in TOPICS:
        assert asyncio.run(topic_partitions(stack.kafka_bootstrap, spec.name)) == list(range(12)), spec.name


def test_topic_creation_is_idempotent(stack: StackInfo) -> None:
    result = asyncio.run(ensure_topics(stack.kafka_bootstrap))
    assert set(result.values()) == {"exists (12 partitions)"}


def test_the_cluster_stack_runs_three_brokers_and_a_redis_cluster(tmp_path: Path) -> None:
    """`crm stack up --cluster` on ports of its own: three KRaft brokers whose topics have three
    replicas and need two in sync, a Redis Cluster of three masters with a replica each (AOF on),
    every slot served; up again changes nothing; down stops all nine processes."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from crm.localstack import ClusterStack

    settings = CommonSettings(
        kafka_bootstrap="127.0.0.1:24692", redis_url="redis://127.0.0.1:24979/0", state_dir=tmp_path / "cluster"
    )
    local = ClusterStack(settings, say=lambda _: None)
    try:
        local.up(180)
        assert local.kafka_ready() and local.redis_ready()
        before = local.status()
        asyncio.run(ensure_topics(local.bootstrap, replication=3))

        async def described() -> tuple[list[tuple[list[int], list[int]]], str]:
            admin = AIOKafkaAdminClient(bootstrap_servers=local.bootstrap)
            await admin.start()
            try:
                topic = (await admin.describe_topics(["crm.events.order"]))[0]
                found = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "crm.events.order")])
                isr = next(c[1] for c in found[0].resources[0][4] if c[0] == "min.insync.replicas")
                return [(p["replicas"], p["isr"]) for p in topic["partitions"]], isr
            finally:
                await admin.close()

        partitions, min_isr = asyncio.run(described())
        assert len(partitions) == 12 and min_isr == "2"
        assert all(len(replicas) == 3 and len(isr) == 3 for replicas, isr in partitions)
        nodes = cast(dict[str, dict[str, str]], redis.Redis(port=24979).cluster("nodes"))
        flags = [n["flags"] for n in nodes.values()]
        assert sum("master" in f for f in flags) == 3 and sum("slave" in f for f in flags) == 3, flags
        assert all(redis.Redis(port=p).config_get("appendonly") == {"appendonly": "yes"} for p in local.redis_ports)
        local.up(180)
        assert local.status() == before
    finally:
        stopped = local.down()
    assert set(stopped) == {"kafka-1", "kafka-2", "kafka-3", *(f"redis-{j}" for j in range(1, 7))}
    assert not local.kafka_ready() and not local.redis_ready()
