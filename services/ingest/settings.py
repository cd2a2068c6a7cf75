"""Ingest settings (environment prefix `CRM_`)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.common.settings import CommonSettings
from services.ingest.core import MAX_REQUEST_BYTES
from services.ingest.validate import Limits

__all__ = ["IngestSettings"]


class IngestSettings(CommonSettings):
    api_keys: SecretStr = Field(..., description="comma-separated API keys accepted in the X-API-Key header")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_events_per_request: int = Field(10_000, ge=1)
    max_string_length: int = Field(256, ge=8)
    max_future_skew_seconds: int = Field(300, ge=0)
    min_event_time_ms: int = 631152000000
    max_amount: float = Field(10_000_000, gt=0, description="largest accepted order amount or price")
    max_depth: int = Field(32, ge=4, le=256, description="deepest accepted nesting of arrays and objects")
    # below Kafka's message limit with room for the dead-letter envelope around a rejected item
    max_item_bytes: int = Field(512 * 1024, ge=1024, le=MAX_REQUEST_BYTES - 64 * 1024)
    ack_timeout_seconds: float = Field(10.0, gt=0, le=300, description="longest wait for Kafka to acknowledge")

    def keys(self) -> list[bytes]:
        return [k.strip().encode() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def limits(self) -> Limits:
        return Limits(
            max_string_length=self.max_string_length,
            max_future_skew_ms=self.max_future_skew_seconds * 1000,
            min_event_time_ms=self.min_event_time_ms,
            max_amount=self.max_amount,
            max_depth=self.max_depth,
            max_item_bytes=self.max_item_bytes,
        )
