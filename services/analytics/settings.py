"""Analytics settings (environment prefix `CRM_`): the history worker and the HTTP API."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.common.settings import StreamSettings

__all__ = ["AnalyticsSettings"]


class AnalyticsSettings(StreamSettings):
    analytics_group: str = Field("crm-analytics", min_length=1)
    # the worker's /healthz and /metrics
    analytics_web_host: str = "127.0.0.1"
    analytics_web_port: int = Field(6069, ge=1, le=65535)
    # a shard's event time passes only what the stager declared complete on it (its progress
    # records), so no transition arrives for a day already closed; off: follow the inputs alone
    analytics_follow_stager: bool = True
    # a snapshot of every stage's members every this many changed days: an answer at any instant
    # reads one snapshot and at most this many days
    analytics_snapshot_every: int = Field(7, ge=1, le=366)
    # paid orders and category browses are kept per day this many days back from the latest
    # closed day: an audience's behaviour term may reach back that far, no further
    analytics_behaviour_days: int = Field(400, ge=1, le=3660)
    # the HTTP API for marketers
    analytics_host: str = "127.0.0.1"
    analytics_port: int = Field(8090, ge=1, le=65535)
    analytics_api_keys: SecretStr = Field(
        SecretStr(""),
        description="comma-separated `key:tenant|tenant` (or `key:*` for every tenant) accepted in X-API-Key",
    )

    @property
    def group(self) -> str:
        return self.analytics_group

    @property
    def web(self) -> tuple[str, int]:
        return self.analytics_web_host, self.analytics_web_port

    def api_keys(self) -> dict[bytes, frozenset[str] | None]:
        """key -> the tenants it may read (None: every tenant). ValueError for an entry without
        a tenant list."""
        out: dict[bytes, frozenset[str] | None] = {}
        for i, entry in enumerate(e.strip() for e in self.analytics_api_keys.get_secret_value().split(",")):
            if not entry:
                continue
            key, sep, tenants = entry.partition(":")
            names = frozenset(t.strip() for t in tenants.split("|") if t.strip())
            if not sep or not key.strip() or not names:
                raise ValueError(f"CRM_ANALYTICS_API_KEYS entry {i + 1}: expected `key:tenant|tenant` or `key:*`")
            out[key.strip().encode()] = None if "*" in names else names
        return out
