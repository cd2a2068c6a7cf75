"""Trigger worker settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.common.settings import StreamSettings

__all__ = ["TriggerSettings"]


class TriggerSettings(StreamSettings):
    triggers_group: str = Field("crm-triggers", min_length=1)
    triggers_web_host: str = "127.0.0.1"
    triggers_web_port: int = Field(6067, ge=1, le=65535)
    trigger_rules_file: Path | None = None
    batch_max: int = Field(1000, ge=1)
    # a shard's event time passes only what the stager declared complete on it (its progress
    # records), so transitions never arrive after the time they belong to; off: follow the inputs
    triggers_follow_stager: bool = True
    # whose progress a shard's time follows: the stager's, or, where scheduled campaigns run, the
    # analytics history worker's (which follows the stager's and writes the campaigns' requests
    # before declaring a time complete), so a campaign's requests never arrive after their time
    triggers_follow: Literal["stager", "analytics"] = "stager"

    @property
    def group(self) -> str:
        return self.triggers_group

    @property
    def web(self) -> tuple[str, int]:
        return self.triggers_web_host, self.triggers_web_port
