"""Ingest settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.common.settings import CommonSettings
from services.ingest.validate import Limits

__all__ = ["IngestSettings"]


class IngestSettings(CommonSettings):
    api_keys: SecretStr = Field(..., description="comma-separated API keys accepted in the X-API-Key header")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_events_per_request: int = Field(10_000, ge=1)
    max_string_length: int = Field(256, ge=8)
    max_future_skew_seconds: int = Field(300, ge=0)
    min_event_time_ms: int = 631152000000

    def keys(self) -> list[bytes]:
        return [k.strip().encode() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def limits(self) -> Limits:
        return Limits(
            max_string_length=self.max_string_length,
            max_future_skew_ms=self.max_future_skew_seconds * 1000,
            min_event_time_ms=self.min_event_time_ms,
        )
