"""A member-day campaign created through the analytics API, then CDNOW replayed through every
service (at full speed and paced): at its time the campaign's audience as it stood then (repeat
buyers without an order in the last 60 days) gets one decision each through the triggers'
guardrails, the same at both paces, and attribution reports the campaign against its held-out
customers. On a stack of its own."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from crm.cli import cli
from crm.replay import replay
from services.analytics.app import SOURCE_TOPICS as ANALYTICS_SOURCES
from services.analytics.settings import AnalyticsSettings
from services.attribution.app import SOURCE_TOPICS as ATTRIBUTION_SOURCES
from services.attribution.settings import AttributionSettings
from services.attribution.store import campaign_counters
from services.stager.settings import StagerSettings
from services.triggers.settings import TriggerSettings
from tests.conftest import StackInfo
from tests.integration.batch_rules import cdnow_events, expected_stages, paid_counts
from tests.integration.stager_process import (
    AnalyticsProcess,
    AttributionProcess,
    StagerProcess,
    TriggersProcess,
    WorkerProcess,
    post_json,
)
from tests.integration.test_determinism import (
    CDNOW_SAMPLE,
    STAGER_INPUTS,
    TRIGGER_INPUTS,
    _outputs,
    _subset,
    start_at_end,
)

_OFFSET = int(os.environ.get("CRM_TEST_PORT_OFFSET", "0"))
KEY = "planner-key"
RUN_AT = "1997-06-07T10:00:00+08:00"  # a Saturday morning in Shanghai
RUN_MS = 865_648_800_000
AUDIENCE = "(pyramid:repeat | pyramid:loyal) - paid_orders_60d >= 1"  # repeat buyers quiet for two months


def _post(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return post_json(port, path, body, KEY)


def _run(stack: StackInfo, data: Path, tmp_path: Path, name: str, speed: float | None, port: int) -> str:
    """Schedule the campaign for a new tenant, replay `data` through every service; the tenant."""
    run = uuid.uuid4().hex[:6]
    tenant = f"md-{name}-{run}"
    groups = {s: f"{s}-md-{name}-{run}" for s in ("stager", "triggers", "attribution", "analytics")}
    for service, topics in (("stager", STAGER_INPUTS), ("triggers", (*TRIGGER_INPUTS, "crm.campaigns.requests")),
                            ("attribution", ATTRIBUTION_SOURCES), ("analytics", ANALYTICS_SOURCES)):  # fmt: skip
        asyncio.run(start_at_end(stack, groups[service], tuple(topics)))
    procs: list[WorkerProcess] = [
        StagerProcess(stack, groups["stager"], port, tmp_path / f"{name}-stager.log"),
        AnalyticsProcess(stack, groups["analytics"], port + 1, tmp_path / f"{name}-analytics.log"),
        TriggersProcess(stack, groups["triggers"], port + 2, tmp_path / f"{name}-triggers.log",
                        {"CRM_TRIGGERS_FOLLOW": "analytics"}),
        AttributionProcess(stack, groups["attribution"], port + 3, tmp_path / f"{name}-attribution.log"),
        WorkerProcess("services.analytics.api", stack, port + 4, tmp_path / f"{name}-api.log",
                      {"CRM_ANALYTICS_PORT": str(port + 4), "CRM_ANALYTICS_API_KEYS": f"{KEY}:{tenant}"}),
    ]  # fmt: skip
    common: dict[str, Any] = {"kafka_bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url}
    try:
        for proc in procs:
            proc.start()
        campaign = {"name": "member-day", "audience": AUDIENCE, "action": "member_day_coupon", "channel": "sms",
                    "topic": "coupons", "offer": {"kind": "coupon", "value": 10, "cost": 10}, "at": RUN_AT}  # fmt: skip
        if name == "max":  # through the API
            status, body = _post(port + 4, f"/v1/{tenant}/campaigns", campaign)
            assert status == 201, body
            assert body["next_runs"] == ["1997-06-07T02:00:00Z"]
        else:  # through `crm campaigns create`, which calls it
            spec = tmp_path / "campaign.json"
            spec.write_text(json.dumps(campaign))
            env = {"CRM_ANALYTICS_URL": f"http://127.0.0.1:{port + 4}", "CRM_ANALYTICS_KEY": KEY}
            done = CliRunner().invoke(cli, ["campaigns", "create", str(spec), "--tenant", tenant], env=env)
            assert done.exit_code == 0 and "next runs: 1997-06-07T02:00:00Z" in done.output, done.output
            done = CliRunner().invoke(cli, ["campaigns", "list", "--tenant", tenant], env=env)
            assert "member-day" in done.output and AUDIENCE.replace(" ", "") in done.output.replace(" ", "")
        bad = {**campaign, "audience": "pyramid:loyal & city:Shanghai"}
        status, body = _post(port + 4, f"/v1/{tenant}/campaigns", bad)
        assert status == 400 and "an expression of stages (model:stage) and behaviours" in body["error"], body
        asyncio.run(replay(StagerSettings(**common, stager_group=groups["stager"]), data, "cdnow", tenant,
                           speed=speed, timeout=900, say=print,
                           triggers=TriggerSettings(**common, triggers_group=groups["triggers"]),
                           attribution=AttributionSettings(**common, attribution_group=groups["attribution"]),
                           analytics=AnalyticsSettings(**common, analytics_group=groups["analytics"])))  # fmt: skip
    finally:
        for proc in procs:
            proc.stop()
    return tenant


@pytest.mark.timeout(1200)
def test_a_member_day_campaign_reaches_its_audience_once_within_the_guardrails(
    quiet_stack: StackInfo, tmp_path: Path
) -> None:
    data = _subset(CDNOW_SAMPLE, 600, tmp_path / "cdnow-600.txt")
    events = cdnow_events(data)
    stages = expected_stages(events, RUN_MS)["pyramid"]
    audience = {c for c, s in stages.items() if s in ("repeat", "loyal")} - set(paid_counts(events, RUN_MS, 60))
    assert len(audience) > 50
    tenants = {
        name: _run(quiet_stack, data, tmp_path, name, speed, 22800 + 5 * i + _OFFSET)
        for i, (name, speed) in enumerate((("max", None), ("paced", 3_000_000.0)))
    }
    _, decisions = asyncio.run(_outputs(quiet_stack.kafka_bootstrap, set(tenants.values())))
    said: dict[str, dict[str, str | None]] = {}
    for name, tenant in tenants.items():
        mine = [r for r in decisions[tenant] if r["rule"] == "member_day"]
        ids = [r["trigger_id"] for r in mine]
        assert len(ids) == len(set(ids)), f"{name}: a decision reached Kafka twice"
        assert sorted(r["customer_id"] for r in mine) == sorted(audience), f"{name}: not once per member"
        assert {(r["campaign_id"], r["cause"], int(r["decided_at"].timestamp() * 1000)) for r in mine} == {
            ("member-day", f"campaign:member-day:{RUN_MS}", RUN_MS)
        }
        reasons = {r["suppressed"] for r in mine}
        assert None in reasons and reasons <= {None, "holdout", "holdout:global", "frequency_cap"}, reasons
        said[name] = {r["customer_id"]: r["suppressed"] for r in mine}
        trials = sum(1 for r in mine if r["suppressed"] in (None, "holdout", "holdout:global"))
        counters = asyncio.run(_counters(quiet_stack, tenant, "member-day"))
        total = sum(v for k, v in counters.items() if k.endswith("|trials") and ("treatment" in k or "control" in k)
                    and k.split("|")[1] in ("treatment", "control"))  # fmt: skip
        assert total == trials, f"{name}: attribution counts {total} trials of {trials} touches"
    # the holdouts are a hash of the tenant: compare the customers neither run held out
    held = ("holdout", "holdout:global")
    both = [c for c in audience if said["max"][c] not in held and said["paced"][c] not in held]
    assert len(both) > 30
    assert {c: said["paced"][c] for c in both} == {c: said["max"][c] for c in both}, "the decisions depend on the pace"


async def _counters(stack: StackInfo, tenant: str, campaign: str) -> dict[str, int]:
    redis: Any = Redis.from_url(stack.redis_url)
    try:
        return (await campaign_counters(redis, tenant))[campaign][1]
    finally:
        await redis.aclose()
