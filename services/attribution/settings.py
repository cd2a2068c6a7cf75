"""Attribution worker settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.settings import StreamSettings

__all__ = ["AttributionSettings"]


class AttributionSettings(StreamSettings):
    attribution_group: str = Field("crm-attribution", min_length=1)
    attribution_web_host: str = "127.0.0.1"
    attribution_web_port: int = Field(6068, ge=1, le=65535)
    attribution_file: Path | None = None
    # a shard's event time passes only what the triggers declared complete on it (their progress
    # records), so no touch arrives after its time; off: follow the inputs alone
    attribution_follow_triggers: bool = True
    # how often each campaign's readout is published on crm.attribution.readouts (when it changed)
    attribution_readout_seconds: float = Field(5.0, gt=0, le=3600)

    @property
    def group(self) -> str:
        return self.attribution_group

    @property
    def web(self) -> tuple[str, int]:
        return self.attribution_web_host, self.attribution_web_port
