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
