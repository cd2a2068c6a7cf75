"""Shared fixtures. Integration tests run against the real Kafka broker and Redis server.

The stack comes from the project's own `LocalStack` (Kafka jars from Maven Central run by Java
17, Debian's redis-server). Where Java/Maven are missing but a Docker engine answers, the same
stack runs in testcontainers instead; `CRM_TEST_STACK=local|docker` forces a choice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from services.common.settings import REPO_ROOT, CommonSettings


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap: str
    redis_url: str
    kind: str
    settings: CommonSettings | None = None


# The suite's stack has ports and a state folder of its own, so it never meets `make demo`'s.
# Every port the suite listens on is below 32768, outside Linux's ephemeral range, so no
# client connection's own port can hold it when a broker, Redis or worker starts.
# CRM_TEST_PORT_OFFSET moves every port, so two checkouts can run their suites side by side.
_OFFSET = int(os.environ.get("CRM_TEST_PORT_OFFSET", "0"))
TEST_SETTINGS = CommonSettings(
    kafka_bootstrap=f"127.0.0.1:{25092 + _OFFSET}",
    redis_url=f"redis://127.0.0.1:{25379 + _OFFSET}/0",
    state_dir=REPO_ROOT / ".run" / f"test-stack{_OFFSET or ''}",
)


QUIET_SETTINGS = CommonSettings(
    kafka_bootstrap=f"127.0.0.1:{23092 + _OFFSET}",
    redis_url=f"redis://127.0.0.1:{23379 + _OFFSET}/0",
    state_dir=REPO_ROOT / ".run" / f"test-quiet-stack{_OFFSET or ''}",
)


# A third stack whose Kafka and Redis the fault tests kill and restart.
FAULT_SETTINGS = CommonSettings(
    kafka_bootstrap=f"127.0.0.1:{24092 + _OFFSET}",
    redis_url=f"redis://127.0.0.1:{24379 + _OFFSET}/0",
    state_dir=REPO_ROOT / ".run" / f"test-fault-stack{_OFFSET or ''}",
)


# A Kafka cluster of three brokers (21092, 21094, 21096) and a Redis Cluster of six nodes
# (21379-21384, their buses 100 above), for the scale-out tests.
CLUSTER_SETTINGS = CommonSettings(
    kafka_bootstrap=f"127.0.0.1:{21092 + _OFFSET}",
    redis_url=f"redis://127.0.0.1:{21379 + _OFFSET}/0",
    state_dir=REPO_ROOT / ".run" / f"test-cluster-stack{_OFFSET or ''}",
)


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _choose() -> str:
    forced = os.environ.get("CRM_TEST_STACK", "").lower()
    if forced in ("local", "docker"):
        return forced
    if shutil.which("java") and shutil.which("mvn") and shutil.which("redis-server"):
        return "local"
    if _docker_available():
        return "docker"
    return "local"  # fails with a message naming what is missing: never a silent skip


@contextmanager
def _stack(settings: CommonSettings) -> Iterator[StackInfo]:
    """Kafka + Redis with every topic of the table created: the project's local stack on the
    ports of `settings`, or testcontainers where only a Docker engine is available."""
    import asyncio

    from services.common.topics import ensure_topics

    kind = _choose()
    if kind == "docker":
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka, RedisContainer("redis:7.0") as redis:
            info = StackInfo(
                kafka.get_bootstrap_server(),
                f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
                "docker",
            )
            asyncio.run(ensure_topics(info.kafka_bootstrap))
            yield info
        return

    from crm.localstack import LocalStack

    local = LocalStack(settings)
    was_running = local.kafka_ready() and local.redis_ready()
    if not was_running:  # a stack of the suite's own: start from empty topics and Redis
        local.down()
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    local.up()
    asyncio.run(ensure_topics(settings.kafka_bootstrap))
    try:
        yield StackInfo(settings.kafka_bootstrap, settings.redis_url, "local", settings)
    finally:
        if not was_running and not os.environ.get("CRM_KEEP_STACK"):
            local.down()


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    """Kafka + Redis for the whole session, with every topic of the table created."""
    with _stack(TEST_SETTINGS) as info:
        yield info


@pytest.fixture(scope="module")
def quiet_stack() -> Iterator[StackInfo]:
    """A second Kafka + Redis, empty, for tests whose workers must not first read everything the
    session's other tests produced (a new consumer group starts at the earliest offsets)."""
    with _stack(QUIET_SETTINGS) as info:
        yield info


@pytest.fixture(scope="module")
def cluster_stack() -> Iterator[StackInfo]:
    """Three Kafka brokers and a Redis Cluster (three masters, a replica each), empty, with every
    topic created with three replicas: the project's cluster stack (`crm stack up --cluster`)."""
    import asyncio

    from crm.localstack import ClusterStack
    from services.common.topics import ensure_topics

    local = ClusterStack(CLUSTER_SETTINGS)
    local.down()
    shutil.rmtree(CLUSTER_SETTINGS.state_dir, ignore_errors=True)
    local.up(240)
    asyncio.run(ensure_topics(local.bootstrap, replication=3))
    try:
        yield StackInfo(local.bootstrap, CLUSTER_SETTINGS.redis_url, "cluster", CLUSTER_SETTINGS)
    finally:
        if not os.environ.get("CRM_KEEP_STACK"):
            local.down()


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[StackInfo]:
    """A Kafka + Redis of its own, empty, that a test may kill and restart."""
    with _stack(FAULT_SETTINGS) as info:
        yield info
