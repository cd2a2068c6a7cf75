"""Pure replay pacing: event times -> chunks to produce and when (in wall time) each is due.

At speed N (event seconds per wall second) a chunk never spans more than N x `WALL_STEP` seconds
of event time, and it is due `(its first event time - the first event time) / N` wall seconds
after the replay began; so wall time tracks event time throughout, whether events are
milliseconds or days apart. Without a speed, chunks are `BATCH` events, all due at once.
At any speed a chunk spans at most `max_span_ms` of event time: the events of one chunk reach
their topics in any order, and the engines wait for stragglers only that long (their allowed
lateness), so a wider chunk would make some of its events late.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BATCH", "WALL_STEP", "Chunk", "event_times", "plan_chunks"]

BATCH = 2000
WALL_STEP = 0.1  # seconds of wall time one chunk may stand for at most


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int  # index of the first event
    end: int  # index after the last event
    due: float  # wall seconds after the replay began at which to produce it


def plan_chunks(
    times: Sequence[int],
    start: int,
    speed: float | None,
    batch: int = BATCH,
    step: float = WALL_STEP,
    max_span_ms: float | None = None,
) -> Iterator[Chunk]:
    """Chunks of `times[start:]` (epoch millis, ascending) in order, paced for `speed`, each
    spanning at most `max_span_ms` of event time when given."""
    if start >= len(times):
        return
    origin = times[start]
    spans = [s for s in (speed * step * 1000 if speed else None, max_span_ms) if s is not None]
    span_ms = min(spans) if spans else None
    first = start
    while first < len(times):
        end = min(first + batch, len(times))
        due = (times[first] - origin) / 1000 / speed if speed else 0.0
        if span_ms is not None:
            end = bisect_right(times, times[first] + span_ms, first + 1, end)
        yield Chunk(first, end, due)
        first = end


def event_times(events: Sequence[dict[str, Any]]) -> list[int]:
    """Each event's time in millis, for pacing; an event without an integer time (it will be
    rejected) takes the time of the event before it, or of the first timed one."""
    known = [e["event_time"] for e in events if _timed(e)]
    last = known[0] if known else 0
    out = []
    for event in events:
        if _timed(event):
            last = event["event_time"]
        out.append(last)
    return out


def _timed(event: dict[str, Any]) -> bool:
    value = event.get("event_time")
    return isinstance(value, int) and not isinstance(value, bool)
