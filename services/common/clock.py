"""The event-time clock every stateful service keeps: a watermark per partition (shard).

Each shard's watermark trails the latest event time read from that partition by the allowed
lateness, so a partition read behind the others does not see its events judged late. Several
input topics feed one shard (partition p of each): while one of them has messages not yet read,
the shard's watermark stays at that topic's latest event time (less the lateness), so a topic
read behind the others holds the clock back; a topic read to its end (idle) does not. When a
tenant has been idle for a while and every input is read to its end, every shard may stand at
the tenant's latest event time (never beyond it, unless wall-clock advance is on for live use),
which fires the timers due by then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

__all__ = ["EventClock", "ShardClock", "merge_shard_clocks", "shard_value", "tenant_clock"]


@dataclass(slots=True)
class ShardClock:
    """One partition's time for one tenant."""

    latest: int = 0  # the latest event time read from the partition
    watermark: int = 0  # every input of the partition up to here is applied, in event-time order


@dataclass
class EventClock:
    """One tenant's clock."""

    latest: int = 0  # latest event time seen in any shard
    shards: dict[int, ShardClock] = field(default_factory=dict)
    topics: dict[int, dict[str, int]] = field(default_factory=dict)  # shard -> topic -> latest read
    last_arrival: float = field(default_factory=time.monotonic)
    # shard -> how far an upstream service has declared the tenant's time complete (None: no
    # upstream to follow); a shard's watermark never passes it
    ceilings: dict[int, int] | None = None

    def ceil(self, shard: int, at: int) -> None:
        """The upstream service declared every input of `shard` up to `at` written."""
        if self.ceilings is not None and at > self.ceilings.get(shard, 0):
            self.ceilings[shard] = at

    def _limit(self, shard: int, target: int) -> int:
        return target if self.ceilings is None else min(target, self.ceilings.get(shard, 0))

    @property
    def watermark(self) -> int:
        """What every shard of the tenant has passed."""
        return min((s.watermark for s in self.shards.values()), default=0)

    def shard(self, shard: int) -> ShardClock:
        found = self.shards.get(shard)
        if found is None:
            found = self.shards[shard] = ShardClock()
        return found

    def saw(self, shard: int, event_time: int, now: float, topic: str = "") -> None:
        """An event of `event_time` was read from partition `shard` of `topic` at monotonic time `now`."""
        self.latest = max(self.latest, event_time)
        state = self.shard(shard)
        state.latest = max(state.latest, event_time)
        per_topic = self.topics.get(shard)
        if per_topic is None:
            per_topic = self.topics[shard] = {}
        if event_time > per_topic.get(topic, 0):
            per_topic[topic] = event_time
        self.last_arrival = now

    def settle(self, lateness_ms: int, behind: Collection[tuple[str, int]] = ()) -> None:
        """Every shard's watermark follows its latest event time, `lateness_ms` behind, but not
        past the latest time read from a topic-partition in `behind` (one with messages not yet
        read): what is still to come from it may be older."""
        held: dict[int, list[str]] = {}
        for topic, shard in behind:
            held.setdefault(shard, []).append(topic)
        for shard, state in self.shards.items():
            target = state.latest
            for topic in held.get(shard, ()):
                target = min(target, self.topics.get(shard, {}).get(topic, 0))
            state.watermark = max(state.watermark, self._limit(shard, target - lateness_ms))

    def flush_idle(
        self,
        owned: set[int],
        now: float,
        idle_seconds: float,
        wall_clock_lateness_ms: int | None,
        caught_up: bool = True,
    ) -> bool:
        """After `idle_seconds` without events, with every input read to its end (`caught_up`),
        move every shard up to the latest event time (or to the wall clock less the lateness when
        that is given and later). True if moved."""
        if now - self.last_arrival < idle_seconds or not caught_up:
            return False
        target = self.latest
        if wall_clock_lateness_ms is not None:
            target = max(target, int(time.time() * 1000) - wall_clock_lateness_ms)
        for shard in owned | set(self.shards):
            state = self.shard(shard)
            # following an upstream service, an idle shard's time is what it declared complete
            reach = target if self.ceilings is None else self.ceilings.get(shard, 0)
            state.watermark = max(state.watermark, reach)
        return True


def _parse(stored: dict[bytes, bytes]) -> list[tuple[str, int, int, int, int]]:
    """(tenant, shard, latest, watermark, ceiling or 0) of each "<tenant>|<shard>" ->
    "<latest>:<watermark>[:<ceiling>]" entry."""
    out = []
    for name, value in stored.items():
        tenant, shard = name.decode().rsplit("|", 1)
        latest, watermark, *rest = (int(x) for x in value.split(b":"))
        out.append((tenant, int(shard), latest, watermark, rest[0] if rest else 0))
    return out


def shard_value(state: ShardClock, ceiling: int | None) -> str:
    """What `merge_shard_clocks` reads back: "<latest>:<watermark>", and ":<ceiling>" when the
    clock follows an upstream service (its last declared progress must survive a crash: the
    records that declared it are behind the fence and will not be read again)."""
    value = f"{state.latest}:{state.watermark}"
    return value if ceiling is None else f"{value}:{ceiling}"


def merge_shard_clocks(
    clocks: dict[str, EventClock],
    stored: dict[bytes, bytes],
    owned: set[int] | None,
    new: Callable[[], EventClock] = EventClock,
) -> None:
    """Take in the shard clocks every worker wrote (a Redis hash "<tenant>|<shard>" ->
    "<latest>:<watermark>"): each tenant's latest event time over all shards, so an idle worker's
    timers follow the tenant's time, and the whole clock of the shards in `owned` (a shard a
    rebalance just handed over carries its previous owner's clock; None: every shard, at start)."""
    for tenant, shard, latest, watermark, ceiling in _parse(stored):
        clock = clocks.get(tenant)
        if clock is None:
            clock = clocks[tenant] = new()
        clock.latest = max(clock.latest, latest)
        if owned is None or shard in owned:
            state = clock.shard(shard)
            state.latest, state.watermark = max(state.latest, latest), max(state.watermark, watermark)
            clock.ceil(shard, max(watermark, ceiling))  # what was reached or declared stays so


def tenant_clock(stored: dict[bytes, bytes], tenant: str) -> tuple[int, int]:
    """(latest event time, watermark) of `tenant` over the shard clocks of every worker: the
    latest of any shard, and the lowest watermark of the shards that have seen its events."""
    mine = [(latest, watermark) for t, _, latest, watermark, _ in _parse(stored) if t == tenant]
    if not mine:
        return 0, 0
    return max(latest for latest, _ in mine), min(watermark for _, watermark in mine)
