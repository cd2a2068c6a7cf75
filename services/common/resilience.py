"""Riding out outages: which errors mean "a dependency is away", backoff, and the health record.

A Kafka or Redis outage is waited out, never a crash: the caller logs it once, waits with a
bounded backoff and tries again; `/healthz` answers 503 while a dependency is marked down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import AskError, ClusterError, ReadOnlyError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["OUTAGES", "REDIS_OUTAGES", "Backoff", "Health", "dependency_of", "is_outage", "retry"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that say Kafka or Redis cannot be reached right now (not that the input is bad).
# On a Redis Cluster, a master's failover shows as the cluster down, a slot not served or moved,
# "try again", or a write refused by the old master turned replica.
REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
    AskError,
    ReadOnlyError,
)
OUTAGES: tuple[type[BaseException], ...] = (
    *REDIS_OUTAGES,
    KafkaError,
    ConnectionError,
    TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OUTAGES)


class Backoff:
    """Delays doubling from `first` up to `cap` seconds; `reset` after a success."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    async def wait(self, at_most: float | None = None) -> None:
        await asyncio.sleep(self.delay if at_most is None else max(0.0, min(self.delay, at_most)))
        self.delay = min(self.cap, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first


class Health:
    """Which dependencies are down, since when; logs each outage once and its end once."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.down_since: dict[str, float] = {}

    @property
    def ok(self) -> bool:
        return not self.down_since

    def down(self, dependency: str, exc: BaseException) -> None:
        if dependency not in self.down_since:
            self.down_since[dependency] = time.monotonic()
            log.warning("%s: %s unavailable (%s: %s); waiting and retrying", self.service, dependency,
                        type(exc).__name__, exc)  # fmt: skip

    def up(self, dependency: str) -> None:
        since = self.down_since.pop(dependency, None)
        if since is not None:
            log.warning("%s: %s back after %.1fs", self.service, dependency, time.monotonic() - since)

    def as_json(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "degraded", "down": sorted(self.down_since)}


def dependency_of(exc: BaseException) -> str:
    """Which dependency an outage error is about (as a health label)."""
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, REDIS_OUTAGES):
        return "redis"
    return "network"


async def retry(
    call: Callable[[], Awaitable[T]],
    health: Health,
    backoff: Backoff | None = None,
    give_up_after: float | None = None,
) -> T:
    """`call()` until it returns, waiting out outages (any other error propagates). With
    `give_up_after` (seconds), an outage lasting longer is raised."""
    backoff = backoff or Backoff()
    marked: set[str] = set()
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            result = await call()
        except OUTAGES as exc:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise
            marked.add(dependency_of(exc))
            health.down(dependency_of(exc), exc)
            await backoff.wait(at_most=left)  # the last try comes at the deadline, not before it
            continue
        for dependency in marked:
            health.up(dependency)
        return result
