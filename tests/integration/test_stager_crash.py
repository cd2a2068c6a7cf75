"""Killing the stager in the middle of a replay (no shutdown, no final commit) and starting it
again ends with the same stage counts as an uninterrupted run."""

import asyncio
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from crm.replay import replay
from tests.conftest import StackInfo
from tests.integration.batch_rules import expected_counts, taobao_events
from tests.integration.lookup import floors
from tests.integration.stager_process import StagerProcess
from tests.integration.test_stager_replay import TAOBAO, assert_same, live_counts, settings_for


@pytest.mark.timeout(900)
def test_a_crash_in_the_middle_of_a_replay_ends_with_the_same_counts(stack: StackInfo, tmp_path: Path) -> None:
    group = f"crm-stager-crash-{uuid.uuid4().hex[:8]}"
    tenant = f"crash-{uuid.uuid4().hex[:6]}"
    settings = settings_for(stack, group)
    first = StagerProcess(stack, group, 22067, tmp_path / "first.log").start()
    try:
        asyncio.run(replay(settings, TAOBAO, "taobao", tenant, wait=False, say=print))
        asyncio.run(_wait_some_applied(stack, group))
    finally:
        first.kill()
    second = StagerProcess(stack, group, 22067, tmp_path / "second.log", env={"CRM_LOG_LEVEL": "info"}).start()
    try:
        asyncio.run(replay(settings, TAOBAO, "taobao", tenant, timeout=600, say=print))
        assert_same(asyncio.run(live_counts(stack, tenant)), expected_counts(taobao_events(TAOBAO)))
    finally:
        second.stop()
    _assert_lifecycle_logged(tmp_path / "second.log")


def _assert_lifecycle_logged(path: Path) -> None:
    """The worker's life at INFO, one line each, and no customer id in those lines."""
    lines = path.read_text().splitlines()
    said = {}
    for what in ("started with the applied offsets", "partitions assigned:", "took over", "stopped consuming"):
        said[what] = [line for line in lines if what in line]
        assert said[what], f"no line with {what!r} in {path}"
    taken = said["took over"][0]
    assert "at their applied-offset fence" in taken and " 0 at their" not in taken, taken  # it resumed
    # (ids of a few digits would match counts in any line)
    customers = {c for c in (line.split(",", 1)[0] for line in TAOBAO.read_text().splitlines()) if len(c) >= 5}
    for line in (line for found in said.values() for line in found):
        assert not any(f" {c} " in f" {line} " for c in customers), line


async def _wait_some_applied(stack: StackInfo, group: str) -> None:
    redis = Redis.from_url(stack.redis_url)
    try:
        for _ in range(600):
            if sum((await floors(redis, group)).values()) > 5000:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the first stager applied nothing")
    finally:
        await redis.aclose()
