"""Attribution worker settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings

__all__ = ["AttributionSettings"]


class AttributionSettings(CommonSettings):
    attribution_group: str = Field("crm-attribution", min_length=1)
    attribution_web_host: str = "127.0.0.1"
    attribution_web_port: int = Field(6068, ge=1, le=65535)
    attribution_file: Path | None = None
    allowed_lateness_seconds: float = Field(300.0, ge=0)
    idle_flush_seconds: float = Field(2.0, gt=0)
    wall_clock_advance: bool = False
    batch_max: int = Field(2000, ge=1)
    batch_within_seconds: float = Field(0.2, gt=0)
    timer_interval_seconds: float = Field(0.5, gt=0)
    # how old an outbox entry must be before a worker taking over its shard treats it as left by a crash
    outbox_grace_seconds: float = Field(10.0, ge=0)
    # a shard's event time passes only what the triggers declared complete on it (their progress
    # records), so no touch arrives after its time; off: follow the inputs alone
    attribution_follow_triggers: bool = True

    @property
    def lateness_ms(self) -> int:
        return int(self.allowed_lateness_seconds * 1000)
