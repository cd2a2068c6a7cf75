"""Settings shared by every service, read once from the environment (prefix `CRM_`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.constants import DEFAULT_PARTITIONS
from services.common.errors import ConfigError

__all__ = ["CommonSettings", "REPO_ROOT", "load_settings"]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Ports of the local stack: away from the usual 9092/6379 so it never collides with another broker.
DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_REDIS = "redis://127.0.0.1:16379/0"


class CommonSettings(BaseSettings):
    """Where Kafka and Redis are, and where local state lives."""

    model_config = SettingsConfigDict(env_prefix="CRM_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(DEFAULT_KAFKA, min_length=3)
    redis_url: str = Field(DEFAULT_REDIS, pattern=r"^rediss?://")
    state_dir: Path = REPO_ROOT / ".run"
    ingest_host: str = "127.0.0.1"
    ingest_port: int = Field(8081, ge=1, le=65535)
    log_level: str = Field("info", pattern=r"^(debug|info|warn|warning|error)$")
    # partitions of every topic: the shards of customer state, timers and clocks
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=1024)
    # how long a `crm` command waits for Kafka or Redis to come back before it gives up
    outage_wait_seconds: float = Field(60.0, ge=0)

    def logging_level(self) -> int:
        """`log_level` as a `logging` constant (`warn` is accepted, as Faust spells it)."""
        name = self.log_level.upper()
        return logging.WARNING if name == "WARN" else int(logging.getLevelName(name))


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings `cls`; a bad value raises ConfigError naming the environment key."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if not key:  # a rule over several settings: its message names them
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            shown = err.get("input")
            shown = "..." if isinstance(shown, dict) or "key" in key or "password" in key else repr(shown)
            problems.append(f"{prefix}{key.upper()}: {err['msg']} (got {shown})")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
