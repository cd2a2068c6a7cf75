"""Partition p of every input topic goes to one worker, for any number of workers: a customer's
inputs on several topics are applied by the worker that owns the customer's partition."""

from __future__ import annotations

from typing import Any

import pytest

from services.attribution.app import SOURCE_TOPICS as ATTRIBUTION_TOPICS
from services.common.faustapp import ASSIGNORS
from services.stager.app import SOURCE_TOPICS as STAGER_TOPICS
from services.triggers.app import SOURCE_TOPICS as TRIGGER_TOPICS


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(12))


@pytest.mark.parametrize("topics", [STAGER_TOPICS, TRIGGER_TOPICS, ATTRIBUTION_TOPICS])
@pytest.mark.parametrize("workers", [1, 2, 3, 5, 7, 11, 12, 13])
def test_every_partition_number_has_one_owner_across_the_topics(topics: tuple[str, ...], workers: int) -> None:
    (assignor,) = ASSIGNORS
    members: dict[str, Any] = {f"worker-{i:02d}": assignor.metadata(topics) for i in range(workers)}
    assignment = assignor.assign(_Cluster(), members)
    owners: dict[int, set[str]] = {}
    for member, given in assignment.items():
        for topic, partitions in given.assignment:
            assert topic in topics
            for p in partitions:
                owners.setdefault(p, set()).add(member)
    assert set(owners) == set(range(12))
    assert all(len(who) == 1 for who in owners.values()), owners
