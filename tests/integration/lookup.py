"""Finding a customer's keys in Redis from a test: they live under the customer's shard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common import keys
from services.common.clock import tenant_clock
from services.common.fence import FLOOR
from services.common.redisbatch import connect
from services.common.units import Units, read_clocks, read_floors
from tests.conftest import StackInfo

__all__ = ["client", "clock_of", "cluster_env", "cluster_settings", "floors", "set_floors", "state_of"]

SHARDS = 64  # more than any test's partitions


async def state_of(redis: Any, key: Callable[[str, int, str], str], tenant: str, customer: str) -> bytes | None:
    """Field `s` of the customer's state hash `key(tenant, shard, customer)`, on whichever shard it is."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(SHARDS):
            pipe.hget(key(tenant, shard, customer), "s")
        found = [v for v in await pipe.execute() if v is not None]
    assert len(found) <= 1, f"{customer} has state on {len(found)} shards"
    return found[0] if found else None


async def floors(redis: Any, group: str) -> dict[str, int]:
    """ "topic:partition" -> how far `group` has applied everything."""
    return await read_floors(redis, group)


async def set_floors(redis: Any, group: str, ends: dict[str, int]) -> None:
    """Put `group`'s floors at `ends` ("topic:partition" -> offset): its workers start there."""
    shards: dict[int, dict[str, int]] = {}
    for tp, end in ends.items():
        shards.setdefault(int(tp.rsplit(":", 1)[1]), {})[tp] = end
    for shard, mapping in shards.items():
        await redis.hset(keys.applied_offsets_key(group, FLOOR, shard), mapping=mapping)
    await Units(redis).add({(FLOOR, shard) for shard in shards})


async def clock_of(redis: Any, service: str, tenant: str) -> tuple[int, int]:
    """(latest event time, watermark) of `tenant` in `service`'s clocks, over every shard."""
    return tenant_clock(await read_clocks(redis, service), tenant)


def cluster_env(stack: StackInfo) -> dict[str, str]:
    """The settings a process needs on `stack` beyond its addresses (the cluster clients, the
    topics' replicas)."""
    return {"CRM_REDIS_CLUSTER": "true", "CRM_KAFKA_REPLICATION": "3"} if stack.kind == "cluster" else {}


def cluster_settings(stack: StackInfo) -> dict[str, Any]:
    """`cluster_env` as settings' keyword arguments."""
    return {"redis_cluster": True, "kafka_replication": 3} if stack.kind == "cluster" else {}


def client(stack: StackInfo) -> Any:
    """A Redis client of `stack` (the cluster client on the cluster stack)."""
    return connect(stack.redis_url, stack.kind == "cluster")
