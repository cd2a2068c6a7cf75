from aiokafka import TopicPartition

from services.common.batchloop import describe


def test_partitions_are_described_in_runs_per_topic() -> None:
    tps = [TopicPartition("b", p) for p in (7, 0, 1, 2, 5, 4)] + [TopicPartition("a", 3)]
    assert describe(tps) == "a[3] b[0-2,4-5,7]"


def test_no_partitions_describe_as_nothing() -> None:
    assert describe([]) == ""
