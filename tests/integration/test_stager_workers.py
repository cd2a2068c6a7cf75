"""Two stager workers in one group split the partitions and together give the counts of an
independent batch computation; `crm replay` waits on the clock over both workers' shards."""

import asyncio
import uuid
from pathlib import Path

import pytest

from crm.replay import replay
from tests.conftest import StackInfo
from tests.integration.batch_rules import cdnow_events, expected_counts
from tests.integration.stager_process import StagerProcess
from tests.integration.test_stager_replay import CDNOW, assert_same, live_counts, settings_for


def _applied(metrics_text: str) -> float:
    return sum(
        float(line.split()[-1]) for line in metrics_text.splitlines() if line.startswith("crm_stager_events_total{")
    )


@pytest.mark.timeout(900)
def test_two_workers_give_the_counts_of_one(stack: StackInfo, tmp_path: Path) -> None:
    group = f"crm-stager-pair-{uuid.uuid4().hex[:8]}"
    tenant = f"pair-{uuid.uuid4().hex[:6]}"
    workers = [StagerProcess(stack, group, 22070 + i, tmp_path / f"worker{i}.log").start() for i in range(2)]
    try:
        report = asyncio.run(replay(settings_for(stack, group), CDNOW, "cdnow", tenant, timeout=600, say=print))
        events = cdnow_events(CDNOW)
        assert report.accepted == sum(len(v) for v in events.values())
        assert_same(asyncio.run(live_counts(stack, tenant)), expected_counts(events))
        applied = [_applied(w.metrics()) for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert all(n > 0 for n in applied), applied  # both took part
