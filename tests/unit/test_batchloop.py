"""The batch loop's own small parts: how partitions are logged, what a rebalance tells the engine."""

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from services.common.batchloop import _Rebalance, describe
from services.common.resilience import Health


def test_partitions_are_described_in_runs_per_topic() -> None:
    tps = [TopicPartition("b", p) for p in (7, 0, 1, 2, 5, 4)] + [TopicPartition("a", 3)]
    assert describe(tps) == "a[3] b[0-2,4-5,7]"


def test_no_partitions_describe_as_nothing() -> None:
    assert describe([]) == ""


class _Engine:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


async def test_a_revoked_partition_makes_the_engine_check_its_outboxes_again() -> None:
    """A shard that leaves and comes back may hold outbox entries its other owner left when it
    stopped: the engine must recover it again, not trust that it did once."""
    engine = _Engine()
    loop = SimpleNamespace(engine=engine, health=Health("stager"), unplaced=set())
    listener = _Rebalance(loop)  # type: ignore[arg-type]
    await listener.on_partitions_assigned({TopicPartition("t", 0)})
    await listener.on_partitions_revoked(set())
    assert engine.resets == 0
    await listener.on_partitions_revoked({TopicPartition("t", 0)})
    assert engine.resets == 1
