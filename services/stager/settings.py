"""Stager settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from services.common.settings import StreamSettings

__all__ = ["StagerSettings"]


class StagerSettings(StreamSettings):
    stager_group: str = Field("crm-stager", min_length=1)
    stager_web_host: str = "127.0.0.1"
    stager_web_port: int = Field(6066, ge=1, le=65535)
    repeat_horizon_seconds: float = Field(900.0, gt=0)
    repeat_limit: int = Field(64, ge=1, le=1024)
    stage_rules_file: Path | None = None
    # keep the raw transition log (crm:log:<tenant>:<model>) this many days behind the watermark
    # (0: all of it); the analytics service's history answers for any instant without it
    transition_log_days: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _horizon_covers_lateness(self) -> StagerSettings:
        if self.repeat_horizon_seconds < self.allowed_lateness_seconds:
            raise ValueError("CRM_REPEAT_HORIZON_SECONDS must be at least CRM_ALLOWED_LATENESS_SECONDS")
        return self

    @property
    def group(self) -> str:
        return self.stager_group

    @property
    def web(self) -> tuple[str, int]:
        return self.stager_web_host, self.stager_web_port

    @property
    def repeat_horizon_ms(self) -> int:
        return int(self.repeat_horizon_seconds * 1000)
