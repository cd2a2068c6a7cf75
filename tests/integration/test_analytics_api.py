"""The analytics HTTP API over the stage history its worker keeps: a replay of CDNOW through the
stager and the history worker, then counts now and at an instant, a flow and a series equal to
the independent batch computation; keys scoped to tenants; bad queries named."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm.replay import replay
from services.analytics.settings import AnalyticsSettings
from services.common.constants import MODEL_STAGES
from services.stager.rules import MODELS
from services.stager.settings import StagerSettings
from tests.conftest import StackInfo
from tests.integration.batch_rules import cdnow_events, expected_counts, expected_flow, expected_stages, paid_counts
from tests.integration.stager_process import AnalyticsProcess, StagerProcess, WorkerProcess, post_json

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cdnow" / "CDNOW_sample.txt"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".run" / "test-artifacts"
_OFFSET = int(os.environ.get("CRM_TEST_PORT_OFFSET", "0"))
STAGER_PORT, HISTORY_PORT, API_PORT = 22074 + _OFFSET, 22075 + _OFFSET, 22076 + _OFFSET
KEY, OTHER_KEY = "analyst-key", "other-brand-key"
T0, T1 = "1997-03-01T00:00:00Z", "1997-09-01T00:00:00Z"
T0_MS, T1_MS = 857_174_400_000, 873_072_000_000


@pytest.fixture(scope="module")
def replayed(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tenant holding the CDNOW sample, with the API up (yields the tenant)."""
    run = uuid.uuid4().hex[:8]
    tenant = f"api-{run}"
    logs = tmp_path_factory.mktemp("analytics-api")
    procs: list[WorkerProcess] = []
    try:
        procs.append(StagerProcess(stack, f"stager-{run}", STAGER_PORT, logs / "stager.log").start())
        procs.append(AnalyticsProcess(stack, f"history-{run}", HISTORY_PORT, logs / "history.log").start())
        api_env = {"CRM_ANALYTICS_PORT": str(API_PORT), "CRM_ANALYTICS_API_KEYS": f"{KEY}:{tenant},{OTHER_KEY}:else"}
        procs.append(WorkerProcess("services.analytics.api", stack, API_PORT, logs / "api.log", api_env).start())
        stager = StagerSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                stager_group=f"stager-{run}")  # fmt: skip
        history = AnalyticsSettings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url,
                                    analytics_group=f"history-{run}")  # fmt: skip
        asyncio.run(replay(stager, SAMPLE, "cdnow", tenant, timeout=600, say=print, analytics=history))
        profiles = logs / "profiles.ndjson"
        profiles.write_text("".join(json.dumps(e) + "\n" for e in _profile_events()))
        asyncio.run(replay(stager, profiles, "ndjson", tenant, timeout=600, say=print, analytics=history))
        yield tenant
    finally:
        for proc in procs:
            proc.stop()


CITIES = ("Shanghai", "Beijing", "New York")


def _profile_events() -> list[dict[str, Any]]:
    """A profile for every customer of the sample in January 1997, and a move to another city
    in March 1997 for every fifth (the later one holds)."""
    out = []
    for n, customer in enumerate(sorted(cdnow_events(SAMPLE), key=int)):
        first = {"type": "profile", "event_id": f"p1-{customer}", "customer_id": customer,
                 "event_time": 852_076_800_000 + n * 1000, "city": CITIES[n % 3], "gender": "fm"[n % 2],
                 "member_since": (820_454_400_000, 852_076_800_000)[n % 2]}  # fmt: skip  # 1996-01-01 or 1997-01-01
        out.append(first)
        if n % 5 == 0:
            out.append({"type": "profile", "event_id": f"p2-{customer}", "customer_id": customer,
                        "event_time": 857_174_400_000 + n * 1000, "city": CITIES[(n + 1) % 3]})  # fmt: skip
    return out


def _attributes() -> dict[str, dict[str, str]]:
    """customer -> attribute -> its value now, computed from `_profile_events` directly."""
    out: dict[str, dict[str, str]] = {}
    for e in sorted(_profile_events(), key=lambda e: e["event_time"]):
        mine = out.setdefault(e["customer_id"], {})
        for name in ("city", "gender"):
            if name in e:
                mine[name] = e[name]
        if "member_since" in e:
            mine["member_since"] = str(datetime.fromtimestamp(e["member_since"] / 1000, UTC).year)
    return out


def _get(path: str, key: str | None = KEY) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{API_PORT}{path}", headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_counts_now_and_at_an_instant_equal_the_batch_computation(replayed: str) -> None:
    events = cdnow_events(SAMPLE)
    now, then = expected_counts(events), expected_counts(events, T0_MS)
    for model in MODELS:
        status, body = _get(f"/v1/{replayed}/stages/{model}/counts")
        assert status == 200, body
        assert {s: n for s, n in body["counts"].items() if n} == now.get(model, {}), model
        assert body["at"] is None and body["total"] == sum(now.get(model, {}).values())
        status, body = _get(f"/v1/{replayed}/stages/{model}/counts?at={T0}")
        assert status == 200, body
        assert {s: n for s, n in body["counts"].items() if n} == then.get(model, {}), model
        assert body["at"] == T0


def test_the_flow_between_two_instants_equals_the_batch_computation(replayed: str) -> None:
    events = cdnow_events(SAMPLE)
    for model in MODELS:
        status, body = _get(f"/v1/{replayed}/stages/{model}/flow?from={T0}&to={T1}")
        assert status == 200, body
        axis = body["stages"]
        moved = {f"{a}->{b}": n for a, row in zip(axis, body["matrix"], strict=True)
                 for b, n in zip(axis, row, strict=True) if n and a != b}  # fmt: skip
        assert moved == expected_flow(events, model, T0_MS, T1_MS), model
        before = expected_counts(events, T0_MS).get(model, {})
        assert [sum(row) for row in body["matrix"][:-1]] == [before.get(s, 0) for s in axis[:-1]]


def test_a_series_gives_the_counts_at_each_step(replayed: str) -> None:
    events = cdnow_events(SAMPLE)
    status, body = _get(f"/v1/{replayed}/stages/lifecycle/series?from={T0}&to={T1}&step_days=30")
    assert status == 200, body
    assert len(body["points"]) == 7  # 184 days: 0, 30, ..., 180
    for point in body["points"][::3]:
        at = T0_MS + body["points"].index(point) * 30 * 86_400_000
        expected = expected_counts(events, at).get("lifecycle", {})
        assert {s: n for s, n in point["counts"].items() if n} == expected, point["at"]


@pytest.mark.parametrize(
    ("path", "key", "status", "said"),
    [
        ("/v1/{t}/stages/aipl/counts", None, 401, "API key"),
        ("/v1/{t}/stages/aipl/counts", "wrong", 401, "API key"),
        ("/v1/{t}/stages/aipl/counts", OTHER_KEY, 403, "may not read tenant"),
        ("/v1/nobody-{t}/stages/aipl/counts", KEY, 403, "may not read tenant"),
        ("/v1/{t}/stages/rfm/counts", KEY, 400, "unknown model 'rfm'"),
        ("/v1/{t}/stages/aipl/counts?at=yesterday", KEY, 400, "parameter `at`"),
        (f"/v1/{{t}}/stages/aipl/flow?from={T1}&to={T0}", KEY, 400, "`to` (1997-03-01T00:00:00Z) is before `from`"),
        ("/v1/{t}/stages/aipl/flow?from=1997-01-01", KEY, 400, "missing parameter `to`"),
        ("/v1/{t}/stages/aipl/series?from=1990-01-01&to=1999-01-01", KEY, 400, "more than 400 points"),
    ],
)
def test_a_request_it_cannot_answer_is_refused_with_its_reason(
    replayed: str, path: str, key: str | None, status: int, said: str
) -> None:
    got, body = _get(path.replace("{t}", replayed), key)
    assert (got, said in body["error"]) == (status, True), body


def test_health_and_metrics(replayed: str) -> None:
    assert _get(f"/v1/{replayed}/stages/aipl/counts", OTHER_KEY)[0] == 403
    status, body = _get("/healthz", None)
    assert (status, body["redis"]) == (200, True)
    with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'crm_analytics_requests_total{status="403"}' in text


def _in(model: str, stage: str) -> set[str]:
    """The customers in `stage` now: at the latest event time, where the replay left the clock."""
    events = cdnow_events(SAMPLE)
    stages = expected_stages(events, max(t for evs in events.values() for t, _, _ in evs))[model]
    return {c for c, s in stages.items() if s == stage}


def _with(name: str, value: str) -> set[str]:
    return {c for c, attrs in _attributes().items() if attrs.get(name) == value}


def _post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return post_json(API_PORT, path, body, KEY)


def _count(tenant: str, expression: str) -> int:
    status, body = _get(f"/v1/{tenant}/audiences/count?expression={urllib.parse.quote(expression)}")
    assert status == 200, body
    return int(body["count"])


def test_an_audience_is_a_set_expression_over_stages_and_attributes(replayed: str) -> None:
    repeat, loyal = _in("pyramid", "repeat"), _in("pyramid", "loyal")
    shanghai, women = _with("city", "Shanghai"), _with("gender", "f")
    assert len(repeat & shanghai) > 10  # the later profile moved some customers out of Shanghai
    assert _count(replayed, "pyramid:repeat & city:Shanghai") == len(repeat & shanghai)
    assert _count(replayed, "(pyramid:repeat | pyramid:loyal) - gender:f") == len((repeat | loyal) - women)
    assert _count(replayed, 'pyramid:loyal & city:"New York" | member_since:1996') == len(
        (loyal & _with("city", "New York")) | _with("member_since", "1996")
    )
    assert _count(replayed, "follow:brand") == 0  # no follow events in this data


def test_a_saved_audience_counts_exports_and_crosses(replayed: str) -> None:
    repeat, shanghai, women = _in("pyramid", "repeat"), _with("city", "Shanghai"), _with("gender", "f")
    status, body = _post(
        f"/v1/{replayed}/audiences", {"name": "sh-repeat", "expression": "pyramid:repeat & city:Shanghai"}
    )
    assert (status, body["count"]) == (201, len(repeat & shanghai)), body
    status, body = _post(
        f"/v1/{replayed}/audiences", {"name": "sh-repeat-women", "expression": "audience:sh-repeat & gender:f"}
    )
    assert (status, body["count"]) == (201, len(repeat & shanghai & women)), body
    status, body = _get(f"/v1/{replayed}/audiences")
    assert [a["name"] for a in body["audiences"]] == ["sh-repeat", "sh-repeat-women"]
    assert _get(f"/v1/{replayed}/audiences/sh-repeat/count")[1]["count"] == len(repeat & shanghai)

    url = f"http://127.0.0.1:{API_PORT}/v1/{replayed}/audiences/sh-repeat/export?format=csv&tags=sh-repeat-women"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"X-API-Key": KEY}), timeout=30) as reply:
        rows = reply.read().decode().splitlines()
    assert rows[0] == "customer_id,tags"
    exported = dict(row.split(",") for row in rows[1:])
    assert set(exported) == repeat & shanghai  # every customer once
    assert {c for c, tags in exported.items() if tags == "sh-repeat-women"} == repeat & shanghai & women
    url = url.replace("format=csv", "format=ndjson")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"X-API-Key": KEY}), timeout=30) as reply:
        assert {json.loads(line)["customer_id"] for line in reply.read().decode().splitlines()} == repeat & shanghai

    status, body = _get(f"/v1/{replayed}/audiences/crossing?expression=pyramid:repeat&rows=city&cols=gender")
    assert status == 200, body
    assert body["rows"]["values"] == sorted(CITIES) and body["cols"]["values"] == ["f", "m"]
    for i, city in enumerate(body["rows"]["values"]):
        for j, gender in enumerate(body["cols"]["values"]):
            assert body["cells"][i][j] == len(repeat & _with("city", city) & _with("gender", gender))

    status, body = _get(f"/v1/{replayed}/audiences/overlap?a=pyramid:repeat&b=city:Beijing")
    beijing = _with("city", "Beijing")
    assert (body["a_only"], body["both"], body["b_only"]) == (len(repeat - beijing), len(repeat & beijing),
                                                             len(beijing - repeat))  # fmt: skip


@pytest.mark.parametrize(
    ("expression", "said", "position"),
    [
        ("aipl:I &", "ends where a term was expected", 8),
        ("aipl:X", "'X' is no stage of aipl", 5),
        ("(aipl:I | city:Shanghai", "'(' is never closed", 0),
        ("aipl:I city:Shanghai", "expected an operator", 7),
        ("audience:nobody", "no saved audience 'nobody'", 0),
        ("aipl:I & paid_orders_3660d >= 1", "reaches back before the 400 days of behaviour kept", 9),
        ("category:7 browsed 30", "expected a window in days", 19),
    ],
)
def test_a_malformed_expression_gets_400_pointing_at_its_position(
    replayed: str, expression: str, said: str, position: int
) -> None:
    status, body = _get(f"/v1/{replayed}/audiences/count?expression={urllib.parse.quote(expression)}")
    assert (status, body["position"]) == (400, position), body
    assert said in body["error"]


def test_the_page_shows_what_the_api_answers(replayed: str) -> None:
    """The marketers' page in Debian's chromium: it opens on the tenant with the key from the
    address's fragment, shows each stage's count, the flow and a live audience count equal to
    the API's, and points at the position of an error in an expression; its screenshot is left
    in .run/test-artifacts/analytics-page.png."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing (make setup installs it)"
    now = _get(f"/v1/{replayed}/stages/pyramid/counts")[1]["counts"]
    # the page's dates mean their ends (the day included): the instant before the next day
    flow = _get(f"/v1/{replayed}/stages/aipl/flow?from={891_388_800_000 - 1}&to={899_251_200_000 - 1}")[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            failures: list[str] = []
            page.on("pageerror", lambda exc: failures.append(str(exc)))
            page.goto(f"http://127.0.0.1:{API_PORT}/?tenant={replayed}#key={KEY}")
            page.wait_for_selector("#stages-table tbody tr")
            assert "key=" not in page.url  # the key leaves the address once read
            shown = dict(
                (row.locator("th").inner_text(), row.locator("td").first.inner_text())
                for row in page.locator("#stages-table tbody tr").all()
            )
            assert {s: shown[s] for s in now} == {s: f"{n:,}" for s, n in now.items()}
            assert page.locator("#funnel canvas").count() == 1  # the chart library drew

            page.select_option("#model", "aipl")
            page.fill("#from", "1998-03-31")
            page.fill("#to", "1998-06-30")
            page.click("#flow-go")
            page.wait_for_function(
                "document.querySelector('#flow-matrix thead th')?.textContent.includes('1998-03-31')"
            )
            cells = [
                [c.inner_text() for c in row.locator("td").all()] for row in page.locator("#flow-matrix tbody tr").all()
            ]
            assert cells == [[f"{n:,}" for n in row] for row in flow["matrix"]]

            expression = "pyramid:repeat & city:Shanghai"
            page.fill("#expression", expression)
            expected = f"{_count(replayed, expression):,}"
            page.wait_for_function(f"document.querySelector('#audience-count').textContent === '{expected}'")
            page.fill("#expression", "pyramid:repeat & & city:Shanghai")
            page.wait_for_selector("#expression-error:not([hidden])")
            said = page.locator("#expression-error").inner_text()
            assert "expected a term, found '&' at position 17" in said
            assert said.splitlines()[-1] == " " * 17 + "^"  # under the second '&'
            # with a date chosen for the stages, the audience is counted as of its end too
            page.fill("#at", "1998-03-01")
            page.dispatch_event("#at", "change")
            expression = "aipl:P | paid_orders_30d >= 1"
            page.fill("#expression", expression)
            then = _get(f"/v1/{replayed}/audiences/count?expression={urllib.parse.quote(expression)}"
                        f"&at={888_796_800_000 - 1}")[1]["count"]  # fmt: skip
            assert then != _count(replayed, expression)
            page.wait_for_function(f"document.querySelector('#audience-count').textContent === '{then:,}'")
            assert page.locator("#audience-when").inner_text() == "at the end of 1998-03-01"
            # no trigger or attribution worker ran for this tenant: the campaign table says so
            page.wait_for_selector("#campaigns tbody tr")
            assert page.locator("#campaigns tbody tr").first.inner_text().startswith("no campaign yet")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)  # kept after the run (.run/ is ignored by git)
            page.screenshot(path=str(ARTIFACTS / "analytics-page.png"), full_page=True)
            assert failures == []
        finally:
            browser.close()


def _expected_audiences() -> list[tuple[str, set[str]]]:
    """A dozen expressions, each with its members computed here with Python's sets from the batch
    computation's stages and the profile events."""
    s = {(m, st): _in(m, st) for m in ("pyramid", "aipl", "lifecycle") for st in MODEL_STAGES[m]}
    city = {c: _with("city", c) for c in CITIES}
    f, m, y96 = _with("gender", "f"), _with("gender", "m"), _with("member_since", "1996")
    everyone = set(_attributes())
    events = cdnow_events(SAMPLE)
    now = max(t for evs in events.values() for t, _, _ in evs)
    paid = {days: paid_counts(events, now, days) for days in (30, 90, 365)}
    return [
        ("paid_orders_30d >= 1", set(paid[30])),
        ("paid_orders_365d >= 2 & gender:f", {c for c, n in paid[365].items() if n >= 2} & f),
        ("aipl:L - paid_orders_90d > 1", s[("aipl", "L")] - {c for c, n in paid[90].items() if n > 1}),
        ("paid_orders_365d = 1 | category:7 browsed 30d", {c for c, n in paid[365].items() if n == 1}),
        ("aipl:P", s[("aipl", "P")]),
        ("aipl:P | aipl:L", s[("aipl", "P")] | s[("aipl", "L")]),
        ("pyramid:loyal & gender:f", s[("pyramid", "loyal")] & f),
        ("pyramid:first_purchase - city:Beijing", s[("pyramid", "first_purchase")] - city["Beijing"]),
        ("lifecycle:churned & (city:Shanghai | city:Beijing)",
         s[("lifecycle", "churned")] & (city["Shanghai"] | city["Beijing"])),
        ("gender:f | gender:m", f | m),
        ("(gender:f | gender:m) - member_since:1996", (f | m) - y96),
        ("lifecycle:declining & member_since:1996 - pyramid:loyal",
         (s[("lifecycle", "declining")] & y96) - s[("pyramid", "loyal")]),
        ('city:"New York" - (pyramid:repeat | pyramid:loyal)',
         city["New York"] - s[("pyramid", "repeat")] - s[("pyramid", "loyal")]),
        ("aipl:L & pyramid:first_purchase", s[("aipl", "L")] & s[("pyramid", "first_purchase")]),
        ("city:Shanghai & city:Beijing", set()),
        ("gender:f - aipl:P - aipl:L | lifecycle:new",
         ((f - s[("aipl", "P")]) - s[("aipl", "L")]) | s[("lifecycle", "new")]),
        ("member_since:1996 | member_since:1997", everyone),
    ]  # fmt: skip


def test_a_dozen_audiences_count_what_a_plain_set_evaluation_gives(replayed: str) -> None:
    cases = _expected_audiences()
    assert sum(1 for _, members in cases if members) >= 10  # not a dozen empty sets
    for expression, members in cases:
        assert _count(replayed, expression) == len(members), expression


def test_the_audience_commands_mirror_the_api(replayed: str, stack: StackInfo, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from crm.cli import cli

    env = {"CRM_REDIS_URL": stack.redis_url}
    runner = CliRunner()
    expression = "pyramid:repeat & city:Shanghai"
    members = _in("pyramid", "repeat") & _with("city", "Shanghai")
    done = runner.invoke(cli, ["audiences", "count", expression, "--tenant", replayed], env=env)
    assert (done.exit_code, done.output.strip()) == (0, str(len(members))), done.output
    done = runner.invoke(cli, ["audiences", "save", "cli-sh", expression, "--tenant", replayed], env=env)
    assert done.exit_code == 0 and f"{len(members)} customers now" in done.output, done.output
    done = runner.invoke(cli, ["audiences", "list", "--tenant", replayed], env=env)
    assert "cli-sh" in done.output and expression in done.output
    out = tmp_path / "sh.ndjson"
    done = runner.invoke(cli, ["audiences", "export", "audience:cli-sh", "--tenant", replayed, "--format", "ndjson",
                               "--out", str(out)], env=env)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert {json.loads(line)["customer_id"] for line in out.read_text().splitlines()} == members
    done = runner.invoke(cli, ["audiences", "count", "pyramid:repeat & & x", "--tenant", replayed], env=env)
    assert done.exit_code == 2 and "at position 17" in done.output and " " * 19 + "^" in done.output, done.output
    done = runner.invoke(cli, ["audiences", "count", "audience:nobody", "--tenant", replayed], env=env)
    assert done.exit_code == 2 and "no saved audience 'nobody'" in done.output, done.output
    refused = tmp_path / "refused.csv"  # an export that fails leaves no file, not an empty one
    done = runner.invoke(cli, ["audiences", "export", "paid_orders_3660d >= 1", "--tenant", replayed,
                               "--out", str(refused)], env=env)  # fmt: skip
    assert done.exit_code == 2 and "behaviour kept" in done.output, done.output
    assert list(tmp_path.iterdir()) == [out]


def test_saved_audiences_that_would_name_each_other_in_a_cycle_are_refused(replayed: str) -> None:
    assert _post(f"/v1/{replayed}/audiences", {"name": "cyc-a", "expression": "pyramid:loyal"})[0] == 201
    assert _post(f"/v1/{replayed}/audiences", {"name": "cyc-b", "expression": "audience:cyc-a | gender:f"})[0] == 201
    status, body = _post(f"/v1/{replayed}/audiences", {"name": "cyc-a", "expression": "audience:cyc-b & city:Beijing"})
    assert status == 400 and "cycle: cyc-a -> cyc-b -> cyc-a" in body["error"], body
    # and cyc-a kept its expression
    assert _count(replayed, "audience:cyc-a") == len(_in("pyramid", "loyal"))


def _delete(path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{API_PORT}{path}", method="DELETE", headers={"X-API-Key": KEY})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _failures_metric() -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{HISTORY_PORT}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("crm_analytics_campaign_run_failures_total{"))  # fmt: skip


def test_a_campaign_whose_audience_cannot_be_answered_fails_alone(replayed: str, stack: StackInfo) -> None:
    """Refused when created if its window is longer than the behaviour kept, or if a run due at
    once reaches back past it; one that gets in anyway (saved before, or by hand) fails once per
    shard, is listed with its reason, and holds back nothing; a campaign can be deleted."""
    base = {"action": "coupon", "channel": "sms", "at": "1997-03-01T00:00:00Z"}
    status, body = _post(f"/v1/{replayed}/campaigns", {**base, "name": "too-long", "audience": "paid_orders_500d >= 1"})
    assert status == 400 and "must fit in the 400 days" in body["error"] and body["position"] == 0, body
    status, body = _post(f"/v1/{replayed}/campaigns", {**base, "name": "too-old", "audience": "paid_orders_30d >= 1"})
    assert status == 400 and "reaches back before the 400 days of behaviour kept" in body["error"], body

    import redis as sync_redis

    from services.analytics.campaigns import CampaignSpec
    from services.common import keys

    spec = CampaignSpec.model_validate({**base, "name": "slipped-in", "audience": "aipl:P - paid_orders_30d >= 1"})
    before = _failures_metric()
    sync_redis.Redis.from_url(stack.redis_url).hset(keys.campaign_specs_key(replayed), spec.name,
                                                     spec.model_dump_json())  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        listed = {c["name"]: c for c in _get(f"/v1/{replayed}/campaigns")[1]["campaigns"]}
        failed = listed["slipped-in"]["failed_runs"]
        if failed and _failures_metric() - before == len(failed):
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)
    assert all("reaches back before the 400 days" in f["reason"] and f["run"] == "1997-03-01T00:00:00Z" for f in failed)
    time.sleep(3)  # ticks went on: each shard's run failed once, not on every tick
    assert _failures_metric() - before == len(failed) == len({f["shard"] for f in failed})
    assert _delete(f"/v1/{replayed}/campaigns/slipped-in") == (200, {"tenant": replayed, "deleted": "slipped-in"})
    assert "slipped-in" not in {c["name"] for c in _get(f"/v1/{replayed}/campaigns")[1]["campaigns"]}
    assert _delete(f"/v1/{replayed}/campaigns/slipped-in")[0] == 404
