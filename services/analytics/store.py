"""A `History` in Redis, in parts that are written once and read only where a question needs them.

Per (tenant, model, shard), under `services.common.keys.history_key`:

- `meta`: hash, `closed` (the last closed day);
- `order`: sorted set of the changed days closed (member and score the day);
- `counts`: hash, day -> JSON of each stage's count at that day's end;
- `day:<d>`: hash, `movers` and `s:<stage>` each stage's entrants (serialised roaring bitmaps),
  `t`, `i`, `c` (the day's transitions: ms offsets, ids, stage codes, as packed arrays);
- `snap:<d>`: hash, stage -> members at that day's end (every `snapshot_every` changed days);
- `current`: hash, stage -> members at the end of the last closed day;
- `open`: sorted set of the transitions of days not yet closed, scored by their time, each
  "<n>:<id>:<stage code>" with `n` (20 digits) its place in arrival order: adding one is a ZADD
  that a redelivery repeats harmlessly, and closing days removes them by score.

A writer adds transitions with `queue_open` (nothing read), and closes days by reading `meta`,
`order`, `current` and `open` and queuing only what is new (`queue_changes`).
A reader loads, for the instants asked about, the order, the counts of the changed day before
each, one snapshot and at most `snapshot_every` days each, and the current parts only when an
instant lies past the closed days.
"""

from __future__ import annotations

import bisect
import json
from array import array
from collections.abc import Iterable
from typing import Any

from pyroaring import BitMap

from services.analytics.history import DAY_MS, Day, History, Transition
from services.common.keys import history_key

__all__ = ["load_for_read", "load_for_write", "queue_changes", "queue_open"]


def _decode_members(raw: dict[bytes, bytes], stages: tuple[str, ...]) -> dict[str, BitMap]:
    found = {k.decode(): BitMap.deserialize(v) for k, v in raw.items()}
    return {s: found.get(s, BitMap()) for s in stages}


def _decode_day(raw: dict[bytes, bytes]) -> Day:
    entrants = {k[2:].decode(): BitMap.deserialize(v) for k, v in raw.items() if k.startswith(b"s:")}
    offsets, ids, codes = array("I"), array("I"), array("B")
    offsets.frombytes(raw[b"t"])
    ids.frombytes(raw[b"i"])
    codes.frombytes(raw[b"c"])
    return Day(BitMap.deserialize(raw[b"movers"]), entrants, offsets, ids, codes)


def _encode_day(day: Day) -> dict[str, bytes]:
    out = {f"s:{s}": b.serialize() for s, b in day.entrants.items()}
    out.update(movers=day.movers.serialize(), t=day.offsets.tobytes(), i=day.ids.tobytes(), c=day.codes.tobytes())
    return out


async def _base(redis: Any, key: Any, history: History, recent: bool = True) -> None:
    """meta and order; with `recent`, also current and open (the members at the end of the last
    closed day and the transitions after it)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(key("meta"), "closed")
        pipe.zrange(key("order"), 0, -1)
        closed, order = await pipe.execute()
    history.closed = int(closed) if closed is not None else -1
    history.order = [int(d) for d in order]
    if recent:
        await _recent(redis, key, history)


async def _recent(redis: Any, key: Any, history: History) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(key("current"))
        pipe.zrange(key("open"), 0, -1, withscores=True)
        current, pending = await pipe.execute()
    history.current = _decode_members(current, history.stages)
    opened: list[tuple[int, bytes, int, str | None]] = []
    for member, at in pending:
        if int(at) // DAY_MS <= history.closed:
            continue  # added after its day was closed (a worker that held the shard before): too late
        n, ident, code = member.split(b":")
        c = int(code)
        opened.append((int(at), n, int(ident), history.stages[c - 1] if c else None))
    opened.sort(key=lambda t: (t[0], t[1]))
    history.open = [(at, ident, stage) for at, _, ident, stage in opened]


async def load_for_write(
    redis: Any, tenant: str, model: str, shard: int, stages: tuple[str, ...], snapshot_every: int = 7
) -> History:
    """What adding transitions and closing days needs (no past days, no snapshots)."""
    history = History(stages, snapshot_every)
    await _base(redis, lambda part: history_key(tenant, model, shard, part), history)
    return history


def queue_changes(pipe: Any, tenant: str, model: str, shard: int, history: History, changed_before: int) -> None:
    """Queue on `pipe` what `history` gained since it was loaded with `changed_before` changed days:
    the new days, their snapshots and counts, the current members, the last closed day and the
    transitions still open."""

    def key(part: str) -> str:
        return history_key(tenant, model, shard, part)

    for day in history.order[changed_before:]:
        pipe.hset(key(f"day:{day}"), mapping=_encode_day(history.days[day]))
        pipe.zadd(key("order"), {str(day): day})
        pipe.hset(key("counts"), str(day), json.dumps(history.counts[day], separators=(",", ":")))
        snap = history.snapshots.get(day)
        if snap is not None:
            pipe.hset(key(f"snap:{day}"), mapping={s: b.serialize() for s, b in snap.items()})
    pipe.delete(key("current"))
    members = {s: b.serialize() for s, b in history.current.items() if b}
    if members:
        pipe.hset(key("current"), mapping=members)
    if history.closed >= 0:
        pipe.zremrangebyscore(key("open"), "-inf", (history.closed + 1) * DAY_MS - 1)
    pipe.hset(key("meta"), "closed", history.closed)


def queue_open(
    pipe: Any, tenant: str, model: str, shard: int, stages: tuple[str, ...], added: Iterable[tuple[int, Transition]]
) -> None:
    """Queue on `pipe` transitions of days not yet closed, each `(n, transition)` with `n` its
    place in arrival order (a Kafka offset): the order of one customer's transitions at one
    instant."""
    code = {s: i + 1 for i, s in enumerate(stages)}
    members = {f"{n:020d}:{ident}:{code[s] if s else 0}": at for n, (at, ident, s) in added}
    if members:
        pipe.zadd(history_key(tenant, model, shard, "open"), members)


async def load_for_read(
    redis: Any,
    tenant: str,
    model: str,
    shard: int,
    stages: tuple[str, ...],
    instants: Iterable[int],
    snapshot_every: int = 7,
) -> History:
    """A `History` holding what answering at `instants` needs, and nothing else."""
    history = History(stages, snapshot_every)

    def key(part: str) -> str:
        return history_key(tenant, model, shard, part)

    instants = list(instants)
    await _base(redis, key, history, recent=False)
    if any(at // DAY_MS - 1 >= history.closed for at in instants):  # past the closed days
        await _recent(redis, key, history)
    days: set[int] = set()
    snaps: set[int] = set()
    counted: set[int] = set()  # the changed day before each instant's own: its counts
    for at in instants:
        day = at // DAY_MS
        days.add(day)
        before = bisect.bisect_left(history.order, day)
        if before:
            counted.add(history.order[before - 1])
        i = bisect.bisect_right(history.order, day - 1)
        start = (i // snapshot_every) * snapshot_every
        if start:
            snaps.add(history.order[start - 1])
        days.update(history.order[start:i])
    days &= set(history.order)
    async with redis.pipeline(transaction=False) as pipe:
        wanted_counts, wanted_days, wanted_snaps = sorted(counted), sorted(days), sorted(snaps)
        if wanted_counts:
            pipe.hmget(key("counts"), [str(d) for d in wanted_counts])
        for d in wanted_days:
            pipe.hgetall(key(f"day:{d}"))
        for d in wanted_snaps:
            pipe.hgetall(key(f"snap:{d}"))
        found = await pipe.execute()
    if wanted_counts:
        history.counts = {d: json.loads(v) for d, v in zip(wanted_counts, found.pop(0), strict=True) if v is not None}
    history.days = {d: _decode_day(raw) for d, raw in zip(wanted_days, found[: len(wanted_days)], strict=True)}
    history.snapshots = {
        d: _decode_members(raw, stages) for d, raw in zip(wanted_snaps, found[len(wanted_days) :], strict=True)
    }
    return history
