"""Scheduled campaigns (member day, member week): what a campaign is and when it runs.

A campaign sends one action to an audience at its time: once (`at`), or every week on a day
and hour in the tenant's zone (`weekly`), from `start` until `until`. Its runs are instants of
event time: the history worker fires a run on a shard once the shard's watermark passes it,
with the audience as it stood at that instant, so a replay of months of history runs every
member day it held, each exactly once.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.times import checked_zone, epoch_ms

__all__ = ["CampaignSpec", "Offer", "Weekly", "request_id", "runs"]

MAX_RUNS = 1000  # a weekly campaign runs at most this many times (about 19 years)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Offer(_Strict):
    kind: str = Field(min_length=1, max_length=64)
    value: float = Field(0.0, ge=0, le=1_000_000)
    cost: float = Field(0.0, ge=0, le=1_000_000)


class Weekly(_Strict):
    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    hour: int = Field(ge=0, le=23)
    minute: int = Field(0, ge=0, le=59)
    timezone: str = "Asia/Shanghai"
    start: datetime  # the first week counted (with its zone)
    until: datetime | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return checked_zone(value)

    @field_validator("start", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give the instant with its zone, e.g. 2024-05-01T00:00:00+08:00")
        return value


class CampaignSpec(_Strict):
    """A scheduled campaign as saved: its audience (an expression of stages and behaviour), what it sends, when."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    audience: str = Field(min_length=1, max_length=4000)
    action: str = Field(min_length=1, max_length=64)
    channel: Literal["sms", "email", "push", "in_app"]
    topic: Literal["coupons", "reminders", "outreach"] = "coupons"
    offer: Offer | None = None
    quiet_hours: Literal["defer", "drop", "ignore"] = "defer"
    at: datetime | None = None  # once
    weekly: Weekly | None = None  # or every week

    @model_validator(mode="after")
    def _one_schedule(self) -> CampaignSpec:
        if (self.at is None) == (self.weekly is None):
            raise ValueError("give the schedule as `at` (once) or `weekly` (every week), one of them")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("`at`: give the instant with its zone, e.g. 2024-05-01T10:00:00+08:00")
        return self


def runs(spec: CampaignSpec, after: int, upto: int) -> list[int]:
    """The campaign's run instants (epoch ms) in (after, upto], in order."""
    if spec.at is not None:
        at = epoch_ms(spec.at.astimezone(UTC))
        return [at] if after < at <= upto else []
    weekly = spec.weekly
    assert weekly is not None
    zone = ZoneInfo(weekly.timezone)
    local = weekly.start.astimezone(zone)
    first = local.replace(hour=weekly.hour, minute=weekly.minute, second=0, microsecond=0)
    first += timedelta(days=(DAYS.index(weekly.day) - first.weekday()) % 7)
    if first < local:
        first += timedelta(days=7)
    end = None if weekly.until is None else epoch_ms(weekly.until.astimezone(UTC))
    out = []
    for week in range(MAX_RUNS):
        moment = (first.replace(tzinfo=None) + timedelta(days=7 * week)).replace(tzinfo=zone)  # wall time kept
        at = epoch_ms(moment.astimezone(UTC))
        if at > upto or (end is not None and at > end):
            break
        if at > after:
            out.append(at)
    return out


def request_id(tenant: str, campaign: str, run_at: int, customer: str) -> str:
    """Deterministic: a run decided again after a crash gives the same ids."""
    return hashlib.blake2b(f"{tenant}|{campaign}|{run_at}|{customer}".encode(), digest_size=16).hexdigest()
