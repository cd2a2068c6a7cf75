"""Settings shared by every service, read once from the environment (prefix `CRM_`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.constants import DEFAULT_PARTITIONS
from services.common.errors import ConfigError

__all__ = ["REPO_ROOT", "CommonSettings", "StreamSettings", "config_problem", "load_settings", "read_config_file"]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Ports of the local stack: away from the usual 9092/6379 so it never collides with another broker.
DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_REDIS = "redis://127.0.0.1:16379/0"


class CommonSettings(BaseSettings):
    """Where Kafka and Redis are, and where local state lives."""

    model_config = SettingsConfigDict(env_prefix="CRM_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(DEFAULT_KAFKA, min_length=3)
    redis_url: str = Field(DEFAULT_REDIS, pattern=r"^rediss?://")
    # the Redis URL names a node of a Redis Cluster: use the cluster client
    redis_cluster: bool = False
    # copies of each topic's partitions `crm topics` creates (3 on a cluster of three brokers)
    kafka_replication: int = Field(1, ge=1, le=16)
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


class StreamSettings(CommonSettings):
    """What the loop of every stream worker reads; each service adds its group, its web port and
    its rules file."""

    allowed_lateness_seconds: float = Field(300.0, ge=0)
    idle_flush_seconds: float = Field(2.0, gt=0)
    wall_clock_advance: bool = False
    batch_max: int = Field(2000, ge=1)
    batch_within_seconds: float = Field(0.2, gt=0)
    timer_interval_seconds: float = Field(0.5, gt=0)
    # how old an outbox entry must be before a worker taking over its shard treats it as left by a crash
    outbox_grace_seconds: float = Field(10.0, ge=0)

    @property
    def lateness_ms(self) -> int:
        return int(self.allowed_lateness_seconds * 1000)

    @property
    def group(self) -> str:
        """The service's group: its consumer group's stem and the name of its applied-offset fence."""
        raise NotImplementedError

    @property
    def web(self) -> tuple[str, int]:
        """Where the worker serves /healthz and /metrics (host, port)."""
        raise NotImplementedError


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last,
    so one of two settings would be dropped without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path, what: str, expected: str = "a mapping") -> dict[str, Any]:
    """The mapping a YAML or JSON file holds; ConfigError naming `what` and the file otherwise
    (also for a key given twice in one mapping)."""
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path}: expected {expected}")
    return loaded


def config_problem(where: str, err: Any) -> str:
    """One line of a settings file's validation error: the key, the message and the value given
    (YAML reads `1e9` as text, which a bare "should be a valid number" would not show)."""
    given = err.get("input")
    shown = "" if isinstance(given, (dict, list, tuple)) else f" (got {given!r})"
    return f"{where or 'config'}: {err['msg']}{shown}"


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
