"""Stage membership over time, answered in time that does not grow with history.

One `History` holds one model's stages for the customers of one shard of one tenant, each
customer a small dense integer id. It keeps, as compressed (roaring) bitmaps:

- per closed day with a change, the customers who moved that day (*movers*) and, per stage, those
  of them in it at the day's end (*entrants*); and that day's transitions in time order, as packed
  arrays, for instants inside it;
- every `snapshot_every` changed days, every stage's members at that day's end (a *snapshot*);
- the count of every stage at the end of each changed day.

A count at an instant is the count at the end of the day before (a lookup) corrected by the
transitions of its own day up to the instant; members at an instant are the nearest snapshot
before it with at most `snapshot_every` days of changes applied, then the instant's own day.
Neither grows with the length of history; a flow between two instants is the intersections of
the two memberships. Days are closed in order (by the engine's watermark: nothing earlier can
still arrive); transitions of days not yet closed are kept aside and applied in time order.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pyroaring import BitMap

__all__ = ["DAY_MS", "NONE", "Day", "History", "Transition"]

DAY_MS = 86_400_000
NONE = "none"  # no stage: not yet arrived, or left the model
Transition = tuple[int, int, str | None]  # (event time ms, customer id, stage after; None: no stage)


@dataclass(slots=True)
class Day:
    """What one day changed."""

    movers: BitMap
    entrants: dict[str, BitMap]  # stage -> movers in it at the day's end
    offsets: array  # type: ignore[type-arg]  # ms since the day's start, ascending
    ids: array  # type: ignore[type-arg]
    codes: array  # type: ignore[type-arg]  # 0: no stage, i + 1: stages[i]

    def nbytes(self) -> int:
        size = len(self.movers.serialize()) + sum(len(b.serialize()) for b in self.entrants.values())
        return size + sum(a.itemsize * len(a) for a in (self.offsets, self.ids, self.codes))


@dataclass(slots=True)
class History:
    """One model's stage history for one shard (see the module)."""

    stages: tuple[str, ...]
    snapshot_every: int = 7
    days: dict[int, Day] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # the changed days closed, ascending
    counts: dict[int, dict[str, int]] = field(default_factory=dict)  # end of a changed day -> counts
    snapshots: dict[int, dict[str, BitMap]] = field(default_factory=dict)  # end of a day -> members
    closed: int = -1  # every day up to this one is closed
    open: list[Transition] = field(default_factory=list)  # of days not yet closed
    current: dict[str, BitMap] = field(default_factory=dict)  # members at the end of the last closed day

    def __post_init__(self) -> None:
        if NONE in self.stages:
            raise ValueError(f"a stage may not be called {NONE!r}")
        self.current = self.current or {s: BitMap() for s in self.stages}

    # --- writing ------------------------------------------------------------------------------
    def add(self, transitions: Iterable[Transition]) -> None:
        """Transitions of days not yet closed (any order; a day already closed is refused)."""
        for t in transitions:
            if t[0] // DAY_MS <= self.closed:
                raise ValueError(f"day {t[0] // DAY_MS} is closed; a transition at {t[0]} came too late")
            if t[2] is not None and t[2] not in self.stages:
                raise ValueError(f"unknown stage {t[2]!r}")
            self.open.append(t)

    def close_until(self, day: int) -> None:
        """Close every day up to `day`: nothing at or before its end can still arrive."""
        if day <= self.closed:
            return
        self.open.sort(key=lambda t: (t[0], t[1]))
        cut = bisect.bisect_left(self.open, (day + 1) * DAY_MS, key=lambda t: t[0])
        done, self.open = self.open[:cut], self.open[cut:]
        start = 0
        while start < len(done):
            d = done[start][0] // DAY_MS
            end = bisect.bisect_left(done, (d + 1) * DAY_MS, lo=start, key=lambda t: t[0])
            self._close_day(d, done[start:end])
            start = end
        self.closed = day

    def _close_day(self, day: int, transitions: Sequence[Transition]) -> None:
        final: dict[int, str | None] = {}
        for _, ident, stage in transitions:
            final[ident] = stage
        movers = BitMap(final)
        entrants = {s: BitMap() for s in self.stages}
        for ident, stage in final.items():
            if stage is not None:
                entrants[stage].add(ident)
        for s in self.stages:
            self.current[s] -= movers
            self.current[s] |= entrants[s]
        code = {s: i + 1 for i, s in enumerate(self.stages)}
        self.days[day] = Day(
            movers,
            {s: b for s, b in entrants.items() if b},
            array("I", (t - day * DAY_MS for t, _, _ in transitions)),
            array("I", (ident for _, ident, _ in transitions)),
            array("B", (code[s] if s is not None else 0 for _, _, s in transitions)),
        )
        for b in (movers, *entrants.values()):
            b.run_optimize()
        self.order.append(day)
        self.counts[day] = {s: len(self.current[s]) for s in self.stages}
        if len(self.order) % self.snapshot_every == 0:
            self.snapshots[day] = {s: BitMap(b) for s, b in self.current.items()}
            for b in self.snapshots[day].values():
                b.run_optimize()

    # --- reading ------------------------------------------------------------------------------
    def counts_at(self, at: int) -> dict[str, int]:
        """Each stage's number of customers at instant `at` (every transition at or before it)."""
        day = at // DAY_MS
        if self.open and min(t[0] for t in self.open) < day * DAY_MS:  # open days before: no counts kept
            return {s: len(b) for s, b in self.members_at(at).items()}
        i = bisect.bisect_left(self.order, day)  # changed days before `at`'s own day: order[:i]
        base = dict(self.counts[self.order[i - 1]]) if i else {s: 0 for s in self.stages}
        moves = self._within(day, at)
        if moves:
            before = self._members_at_day_end(day - 1)
            for ident, stage in moves.items():
                was = next((s for s, b in before.items() if ident in b), None)
                if was is not None:
                    base[was] -= 1
                if stage is not None:
                    base[stage] += 1
        return base

    def members_at(self, at: int) -> dict[str, BitMap]:
        """Each stage's customers at instant `at`."""
        day = at // DAY_MS
        members = self._members_at_day_end(day - 1)
        _move(members, self._within(day, at))
        return members

    def flow(self, t0: int, t1: int) -> dict[tuple[str, str], int]:
        """(stage at t0, stage at t1) -> customers, `NONE` for no stage, stayers included."""
        a, b = self.members_at(t0), self.members_at(t1)
        out: dict[tuple[str, str], int] = {}
        for s1, to in b.items():
            arrived = len(to)
            for s0, fro in a.items():
                n = fro.intersection_cardinality(to)
                arrived -= n
                if n:
                    out[(s0, s1)] = n
            if arrived:
                out[(NONE, s1)] = arrived
        for s0, fro in a.items():
            gone = len(fro) - sum(out.get((s0, s1), 0) for s1 in b)
            if gone:
                out[(s0, NONE)] = gone
        return out

    def _members_at_day_end(self, day: int) -> dict[str, BitMap]:
        """Members at the end of `day` from the nearest snapshot and the changed days after it."""
        if day >= self.closed:
            members = {s: BitMap(b) for s, b in self.current.items()}
            if day > self.closed:  # then the open days up to its end
                moves: dict[int, str | None] = {}
                for t, ident, stage in sorted(self.open, key=lambda t: (t[0], t[1])):
                    if t < (day + 1) * DAY_MS:
                        moves[ident] = stage
                _move(members, moves)
            return members
        i = bisect.bisect_right(self.order, day)  # changed days up to `day`: order[:i]
        # the latest snapshot within order[:i]: snapshots fall on every snapshot_every-th changed day
        snap = (i // self.snapshot_every) * self.snapshot_every
        members = (
            {s: BitMap(b) for s, b in self.snapshots[self.order[snap - 1]].items()}
            if snap
            else {s: BitMap() for s in self.stages}
        )
        for d in self.order[snap:i]:
            change = self.days[d]
            for s in self.stages:
                members[s] -= change.movers
                entered = change.entrants.get(s)
                if entered is not None:
                    members[s] |= entered
        return members

    def _within(self, day: int, at: int) -> dict[int, str | None]:
        """Each customer's last stage from the transitions of `day` up to `at` (closed or open)."""
        out: dict[int, str | None] = {}
        found = self.days.get(day)
        if found is not None:
            upto = bisect.bisect_right(found.offsets, at - day * DAY_MS)
            for ident, code in zip(found.ids[:upto], found.codes[:upto], strict=True):
                out[ident] = self.stages[code - 1] if code else None
        elif day > self.closed:
            start, end = day * DAY_MS, at
            for t, ident, stage in sorted(self.open, key=lambda t: (t[0], t[1])):
                if start <= t <= end:
                    out[ident] = stage
        return out

    def nbytes(self) -> int:
        """Bytes of the serialised bitmaps and arrays (what storing it takes, less key overheads)."""
        days = sum(d.nbytes() for d in self.days.values())
        snaps = sum(len(b.serialize()) for members in self.snapshots.values() for b in members.values())
        return days + snaps + 8 * 2 * len(self.counts) * len(self.stages)


def _move(members: dict[str, BitMap], moves: dict[int, str | None]) -> None:
    """Put each customer of `moves` in its stage (or none), in place."""
    if not moves:
        return
    movers = BitMap(moves)
    for b in members.values():
        b.difference_update(movers)
    for ident, stage in moves.items():
        if stage is not None:
            members[stage].add(ident)
