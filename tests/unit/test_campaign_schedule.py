"""When a scheduled campaign runs (services/analytics/campaigns.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.analytics.campaigns import CampaignSpec, request_id, runs
from services.common.times import iso


def _spec(**schedule: Any) -> CampaignSpec:
    return CampaignSpec(name="md", audience="aipl:I", action="member_day_coupon", channel="sms", **schedule)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def test_a_one_off_campaign_runs_once_in_the_interval_that_holds_it() -> None:
    spec = _spec(at="2024-05-04T10:00:00+08:00")
    at = _ms("2024-05-04T02:00:00+00:00")
    assert runs(spec, 0, at) == [at]
    assert runs(spec, at, 10**13) == []  # (after, upto]: a run already fired does not come again
    assert runs(spec, 0, at - 1) == []


def test_a_weekly_campaign_keeps_its_local_hour_across_a_daylight_saving_change() -> None:
    spec = _spec(weekly={"day": "sat", "hour": 10, "timezone": "America/New_York",
                         "start": "2024-03-01T00:00:00-05:00", "until": "2024-03-31T00:00:00-04:00"})  # fmt: skip
    found = [iso(t) for t in runs(spec, 0, 10**13)]
    # Saturdays at 10:00 in New York: 15:00Z before the change on 10 March, 14:00Z after
    assert found == ["2024-03-02T15:00:00Z", "2024-03-09T15:00:00Z", "2024-03-16T14:00:00Z", "2024-03-23T14:00:00Z",
                     "2024-03-30T14:00:00Z"]  # fmt: skip
    assert [iso(t) for t in runs(spec, _ms("2024-03-09T15:00:00+00:00"), _ms("2024-03-20T00:00:00+00:00"))] == [
        "2024-03-16T14:00:00Z"
    ]


@pytest.mark.parametrize(
    "schedule",
    [
        {},
        {"at": "2024-05-04T10:00:00+08:00", "weekly": {"day": "sat", "hour": 10, "start": "2024-05-01T00:00:00Z"}},
        {"at": "2024-05-04T10:00:00"},
        {"weekly": {"day": "caturday", "hour": 10, "start": "2024-05-01T00:00:00Z"}},
        {"weekly": {"day": "sat", "hour": 24, "start": "2024-05-01T00:00:00Z"}},
        {"weekly": {"day": "sat", "hour": 10, "timezone": "Mars/Olympus", "start": "2024-05-01T00:00:00Z"}},
    ],
)
def test_a_schedule_that_does_not_say_when_is_refused(schedule: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _spec(**schedule)


def test_request_ids_are_fixed_by_tenant_campaign_run_and_customer() -> None:
    assert request_id("t", "md", 1, "c") == request_id("t", "md", 1, "c")
    assert len({request_id("t", "md", 1, "c"), request_id("t", "md", 2, "c"), request_id("u", "md", 1, "c")}) == 3
