"""Replays of real datasets through Kafka and Redis give the stage counts of an independent
batch computation; a crash of the stager in the middle changes nothing."""

import asyncio
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from crm.replay import replay
from services.analytics.settings import AnalyticsSettings
from services.common import keys
from services.stager import analytics
from services.stager.engine import CLOCK as STAGER_CLOCK
from services.stager.rules import MODELS
from services.stager.settings import StagerSettings
from tests.conftest import StackInfo
from tests.integration.batch_rules import Event, cdnow_events, expected_counts, expected_flow, taobao_events
from tests.integration.lookup import client, clock_of, cluster_settings
from tests.integration.stager_process import AnalyticsProcess, StagerProcess

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TAOBAO = DATA / "taobao_userbehavior" / "UserBehavior_by_user.csv"
CDNOW = DATA / "cdnow" / "CDNOW_master.txt"
# the stager's web port moves with the stack's ports, so two checkouts can run this side by side
WEB_PORT = 22066 + int(os.environ.get("CRM_TEST_PORT_OFFSET", "0"))
HISTORY_PORT = 22068 + int(os.environ.get("CRM_TEST_PORT_OFFSET", "0"))


@pytest.fixture(scope="module")
def group() -> str:
    return f"crm-stager-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def stager(stack: StackInfo, group: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StagerProcess]:
    proc = StagerProcess(stack, group, WEB_PORT, tmp_path_factory.mktemp("stager") / "stager.log").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def history(stack: StackInfo, group: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalyticsProcess]:
    log = tmp_path_factory.mktemp("analytics") / "analytics.log"
    proc = AnalyticsProcess(stack, f"{group}-history", HISTORY_PORT, log).start()
    yield proc
    proc.stop()


def settings_for(stack: StackInfo, group: str) -> StagerSettings:
    return StagerSettings(
        kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, **cluster_settings(stack), stager_group=group
    )


async def live_counts(stack: StackInfo, tenant: str) -> dict[str, dict[str, int]]:
    redis = client(stack)
    try:
        return {m: await analytics.counts_now(redis, tenant, m) for m in MODELS}
    finally:
        await redis.aclose()


def assert_same(live: Mapping[str, dict[str, int]], expected: Mapping[str, dict[str, int]]) -> None:
    assert set(expected) <= set(MODELS)  # no model of the batch computation goes unchecked
    for model in MODELS:
        assert live[model] == expected.get(model, {}), model


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("path", "fmt", "reader"), [(TAOBAO, "taobao", taobao_events), (CDNOW, "cdnow", cdnow_events)])
def test_replay_matches_an_independent_batch_computation(
    stack: StackInfo,
    stager: StagerProcess,
    group: str,
    path: Path,
    fmt: str,
    reader: Callable[[Path], Mapping[str, list[Event]]],
) -> None:
    tenant = f"{fmt}-{uuid.uuid4().hex[:6]}"
    report = asyncio.run(replay(settings_for(stack, group), path, fmt, tenant, timeout=600, say=print))
    events = reader(path)
    assert report.accepted == sum(len(v) for v in events.values())
    assert report.latest_ms == max(t for evs in events.values() for t, _, _ in evs)
    assert_same(asyncio.run(live_counts(stack, tenant)), expected_counts(events))
    assert asyncio.run(_clock(stack, tenant)) == (report.latest_ms, report.latest_ms)  # not a moment later


async def _clock(stack: StackInfo, tenant: str) -> tuple[int, int]:
    redis = client(stack)
    try:
        return await clock_of(redis, STAGER_CLOCK, tenant)
    finally:
        await redis.aclose()


def test_counts_at_an_instant_and_flows_between_two_match_the_batch_computation(
    stack: StackInfo, stager: StagerProcess, history: AnalyticsProcess, group: str
) -> None:
    """From the stage history the analytics worker keeps (the CLI reads it, as the API does)."""
    from click.testing import CliRunner

    from crm.cli import cli

    tenant = f"cdnow-at-{uuid.uuid4().hex[:6]}"
    analytics = AnalyticsSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                  analytics_group=f"{group}-history")  # fmt: skip
    asyncio.run(replay(settings_for(stack, group), CDNOW, "cdnow", tenant, timeout=600, say=print, analytics=analytics))
    events = cdnow_events(CDNOW)
    t0, t1 = 875664000000, 883612800000  # 1997-10-01T00:00:00Z, 1998-01-01T00:00:00Z
    env = {"CRM_REDIS_URL": stack.redis_url}
    runner = CliRunner()
    for model in MODELS:
        args = ["stages", "counts", "--model", model, "--tenant", tenant, "--at", "1997-10-01T00:00:00Z", "--json"]
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == dict(sorted(expected_counts(events, t0).get(model, {}).items())), model
        args = [
            "stages",
            "flow",
            "--model",
            model,
            "--tenant",
            tenant,
            "--from",
            "1997-10-01T00:00:00Z",
            "--to",
            "1998-01-01T00:00:00Z",
            "--json",
        ]
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == expected_flow(events, model, t0, t1), model
    now = asyncio.run(live_counts(stack, tenant))  # the stager's own counters
    for model in MODELS:
        result = runner.invoke(cli, ["stages", "counts", "--model", model, "--tenant", tenant, "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == now[model], model


def test_two_tenants_are_fully_separate(stack: StackInfo, stager: StagerProcess, group: str) -> None:
    sample = DATA / "cdnow" / "CDNOW_sample.txt"
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    asyncio.run(replay(settings_for(stack, group), sample, "cdnow", a, timeout=300, say=print))
    counts_a = asyncio.run(live_counts(stack, a))
    asyncio.run(replay(settings_for(stack, group), TAOBAO, "taobao", b, timeout=300, say=print))
    assert asyncio.run(live_counts(stack, a)) == counts_a
    assert sum(asyncio.run(live_counts(stack, b))["pyramid"].values()) == len(taobao_events(TAOBAO))
    assert sum(counts_a["pyramid"].values()) == len(cdnow_events(sample))
    with urllib.request.urlopen(f"http://127.0.0.1:{stager.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert f'crm_stager_events_total{{tenant="{a}"}} 6919.0' in text
    assert 'crm_stager_transitions_total{model="pyramid"}' in text
    assert f'crm_stager_watermark_seconds{{tenant="{b}"}}' in text


def test_replaying_the_same_file_twice_changes_nothing(stack: StackInfo, stager: StagerProcess, group: str) -> None:
    sample = DATA / "cdnow" / "CDNOW_sample.txt"
    tenant = f"twice-{uuid.uuid4().hex[:6]}"
    asyncio.run(replay(settings_for(stack, group), sample, "cdnow", tenant, timeout=300, say=print))
    first = asyncio.run(live_counts(stack, tenant))
    again = asyncio.run(replay(settings_for(stack, group), sample, "cdnow", tenant, timeout=300, say=print))
    assert again.skipped
    assert asyncio.run(live_counts(stack, tenant)) == first
    assert_same(first, expected_counts(cdnow_events(sample)))


def test_the_transition_log_keeps_only_its_retention_behind_the_watermark(stack: StackInfo, tmp_path: Path) -> None:
    """With CRM_TRANSITION_LOG_DAYS the raw log is trimmed behind each tenant's watermark (the
    analytics history answers for older instants); without it, it keeps everything."""
    group = f"crm-stager-retention-{uuid.uuid4().hex[:8]}"
    port = 22077 + int(os.environ.get("CRM_TEST_PORT_OFFSET", "0"))
    env = {"CRM_TRANSITION_LOG_DAYS": "30", "CRM_TIMER_INTERVAL_SECONDS": "0.5"}
    proc = StagerProcess(stack, group, port, tmp_path / "stager.log", env).start()
    tenant = f"retention-{uuid.uuid4().hex[:6]}"
    try:
        sample = DATA / "cdnow" / "CDNOW_sample.txt"
        asyncio.run(replay(settings_for(stack, group), sample, "cdnow", tenant, timeout=300, say=print,
                           triggers=None))  # fmt: skip
        latest, watermark = asyncio.run(_clock(stack, tenant))
        oldest = asyncio.run(_oldest_logged(stack, tenant, "lifecycle", within=90))
    finally:
        proc.stop()
    assert watermark >= latest - 1
    assert oldest >= watermark - 30 * 86_400_000, "entries older than the retention are still there"


async def _oldest_logged(stack: StackInfo, tenant: str, model: str, within: float) -> int:
    """The time of the log's oldest entry, once the trimming (every 10 s) has run."""
    redis = client(stack)
    try:
        deadline = time.monotonic() + within
        while True:
            firsts = [await redis.zrange(keys.log_key(tenant, s, model), 0, 0, withscores=True) for s in range(12)]
            oldest = min((int(f[0][1]) for f in firsts if f), default=None)
            watermark = (await _clock(stack, tenant))[1]
            if oldest is not None and oldest >= watermark - 30 * 86_400_000 or time.monotonic() > deadline:
                return oldest or 0
            await asyncio.sleep(1.0)
    finally:
        await redis.aclose()
