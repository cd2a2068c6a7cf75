"""Stager settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from services.common.settings import CommonSettings

__all__ = ["StagerSettings"]


class StagerSettings(CommonSettings):
    stager_group: str = Field("crm-stager", min_length=1)
    stager_web_host: str = "127.0.0.1"
    stager_web_port: int = Field(6066, ge=1, le=65535)
    allowed_lateness_seconds: float = Field(300.0, ge=0)
    repeat_horizon_seconds: float = Field(900.0, gt=0)
    repeat_limit: int = Field(64, ge=1, le=1024)
    idle_flush_seconds: float = Field(2.0, gt=0)
    wall_clock_advance: bool = False
    batch_max: int = Field(2000, ge=1)
    batch_within_seconds: float = Field(0.2, gt=0)
    timer_interval_seconds: float = Field(0.5, gt=0)
    stage_rules_file: Path | None = None
    # how old an outbox entry must be before a worker taking over its shard treats it as left by a crash
    outbox_grace_seconds: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _horizon_covers_lateness(self) -> StagerSettings:
        if self.repeat_horizon_seconds < self.allowed_lateness_seconds:
            raise ValueError("CRM_REPEAT_HORIZON_SECONDS must be at least CRM_ALLOWED_LATENESS_SECONDS")
        return self

    @property
    def lateness_ms(self) -> int:
        return int(self.allowed_lateness_seconds * 1000)

    @property
    def repeat_horizon_ms(self) -> int:
        return int(self.repeat_horizon_seconds * 1000)
