"""The local stack: real broker and Redis, idempotent start, topics from the table."""

import asyncio

import pytest
import redis

from services.common.constants import TOPICS
from services.common.localstack import LocalStack
from services.common.tail import topic_partitions
from services.common.topics import ensure_topics


def test_up_twice_keeps_the_same_processes(stack):
    if stack.kind != "local":
        pytest.skip("pid files exist only for the project's own local stack")
    local = LocalStack(stack.settings, say=lambda _: None)
    before = local.status()
    local.up()
    assert local.status() == before
    assert before["kafka"].startswith("running") and before["redis"].startswith("running")


def test_redis_runs_with_aof_every_second_on_its_own_port(stack):
    client = redis.Redis.from_url(stack.redis_url)
    assert client.ping()
    if stack.kind == "local":
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "1024"}
        assert client.config_get("port") == {"port": stack.redis_url.rsplit(":", 1)[1].split("/")[0]}
        assert client.config_get("dir")["dir"].startswith(str(stack.settings.state_dir))


def test_every_topic_of_the_table_exists_with_12_partitions(stack):
    for spec in TOPICS:
        assert asyncio.run(topic_partitions(stack.kafka_bootstrap, spec.name)) == list(range(12)), spec.name


def test_topic_creation_is_idempotent(stack):
    result = asyncio.run(ensure_topics(stack.kafka_bootstrap))
    assert set(result.values()) == {"exists (12 partitions)"}
