"""`crm demo` end to end, as a newcomer runs it, on a stack of its own (own ports and state folder)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import cast

import pytest

from crm.localstack import pid_alive

ROOT = Path(__file__).resolve().parents[2]
CRM = [sys.executable, "-m", "crm.cli"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CRM_STATE_DIR": str(tmp_path / "state"),
        "CRM_KAFKA_BOOTSTRAP": "127.0.0.1:29092",
        "CRM_REDIS_URL": "redis://127.0.0.1:26379/0",
        "CRM_INGEST_PORT": "28081",
        "CRM_STAGER_WEB_PORT": "28066",
        "CRM_STAGER_GROUP": "crm-stager-e2e",
        "CRM_TRIGGERS_WEB_PORT": "28067",
        "CRM_TRIGGERS_GROUP": "crm-triggers-e2e",
        "CRM_ATTRIBUTION_WEB_PORT": "28068",
        "CRM_ATTRIBUTION_GROUP": "crm-attribution-e2e",
        "CRM_ANALYTICS_WEB_PORT": "28069",
        "CRM_ANALYTICS_GROUP": "crm-analytics-e2e",
        "CRM_ANALYTICS_PORT": "28090",
    }


def crm(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CRM, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_twice_then_down_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    try:
        first = crm(env, "demo", "--customers", "200")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "ingest up" in first.stdout and "stager up" in first.stdout
        accepted = int(first.stdout.split(" accepted")[0].rsplit(":", 1)[1])
        assert accepted > 500
        assert "rejected: invalid_json" in first.stdout and "rejected: missing_field" in first.stdout
        assert "first dead letters" in first.stdout and '"reason": "' in first.stdout.split("first dead letters")[1]
        # the stager placed every demo customer in the pyramid
        pyramid = first.stdout.split("  pyramid ")[1].splitlines()[0]
        assert sum(int(part.split()[-1]) for part in pyramid.split(",")) == 200
        # the triggers worker decided on the stager's transitions and the orders
        assert "triggers up" in first.stdout
        decisions = first.stdout.split("trigger decisions for tenant 'demo'")[1]
        for rule in ("considering_coupon", "first_purchase_gift", "welcome"):
            assert f"  {rule} " in decisions
        assert int(cast(re.Match[str], re.search(r"  welcome +sent (\d+)", decisions)).group(1)) > 0
        # attribution took every welcome decision as a trial of its campaign
        assert "attribution up" in first.stdout
        campaigns = first.stdout.split("campaigns of tenant 'demo' against their control groups")[1]
        welcome = cast(re.Match[str], re.search(r"  welcome +7d +(\d+)/(\d+) ", campaigns))
        # one welcome per customer: as many treated customers as treated trials
        assert int(welcome.group(1)) > 0 and int(welcome.group(2)) == int(welcome.group(1))

        # the analytics API answers for the demo tenant with the key the demo printed
        api = cast(re.Match[str], re.search(r"analytics API: (\S+) \(header X-API-Key: (\S+)\)", first.stdout))
        assert "analytics page: http://127.0.0.1:28090/?tenant=demo#key=" in first.stdout
        request = urllib.request.Request(api.group(1), headers={"X-API-Key": api.group(2)})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert json.loads(reply.read())["total"] == 200
        # and it shows the campaign table attribution published: the welcome campaign's trials
        results = api.group(1).replace("/stages/pyramid/counts", "/campaigns/results")
        deadline = time.monotonic() + 60
        while True:
            request = urllib.request.Request(results, headers={"X-API-Key": api.group(2)})
            with urllib.request.urlopen(request, timeout=30) as reply:
                shown = {c["campaign_id"]: c for c in json.loads(reply.read())["campaigns"]}
            if "welcome" in shown and shown["welcome"]["all"]["treatment"]["trials"] == int(welcome.group(1)):
                break
            assert time.monotonic() < deadline, shown.get("welcome")
            time.sleep(1)

        # the time from an event's acceptance at ingest to its transitions and decisions on Kafka
        for port, name in ((28066, "stager_event_to_transition"), (28067, "triggers_event_to_decision")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
                text = reply.read().decode()
            count = float(cast(re.Match[str], re.search(rf"crm_{name}_seconds_count (\S+)", text)).group(1))
            total = float(cast(re.Match[str], re.search(rf"crm_{name}_seconds_sum (\S+)", text)).group(1))
            assert count > 100 and 0 < total / count < 600, (name, count, total)

        second = crm(env, "demo", "--customers", "200")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "ingest already up" in second.stdout and "stager already up" in second.stdout
        assert "triggers already up" in second.stdout
        pyramid = second.stdout.split("  pyramid ")[1].splitlines()[0]
        assert sum(int(part.split()[-1]) for part in pyramid.split(",")) == 200  # same customers, more events

        status = crm(env, "stack", "status")
        assert status.returncode == 0 and "ingest" in status.stdout

        pids = [int(p.read_text()) for p in (tmp_path / "state" / "pids").glob("*.pid")]
        assert len(pids) == 8  # kafka, redis, ingest, stager, triggers, attribution, analytics, analytics-api
    finally:
        down = crm(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    for name in ("kafka", "redis", "ingest", "stager", "triggers", "attribution", "analytics", "analytics-api"):
        assert name in down.stdout
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(listening(port) for port in (29092, 29093, 26379, 28081, 28066, 28067, 28068, 28069, 28090))
    assert crm(env, "stack", "status").returncode == 1
