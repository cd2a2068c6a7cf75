"""The stage history index (services/analytics/history.py) against a plain replay of the same
transitions: counts at any instant, members and flows, whatever the snapshot spacing and however
the days are closed."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.history import DAY_MS, NONE, History, Transition

STAGES = ("a", "b", "c")
T0 = 20_000 * DAY_MS


def replay(transitions: list[Transition], at: int) -> dict[int, str]:
    """Each customer's stage at `at`: every transition at or before it, in (time, id) order."""
    stage: dict[int, str] = {}
    for t, ident, to in sorted(transitions, key=lambda t: (t[0], t[1])):
        if t > at:
            break
        if to is None:
            stage.pop(ident, None)
        else:
            stage[ident] = to
    return stage


def naive_counts(transitions: list[Transition], at: int) -> dict[str, int]:
    found = Counter(replay(transitions, at).values())
    return {s: found.get(s, 0) for s in STAGES}


def naive_flow(transitions: list[Transition], t0: int, t1: int) -> dict[tuple[str, str], int]:
    a, b = replay(transitions, t0), replay(transitions, t1)
    return dict(Counter((a.get(c, NONE), b.get(c, NONE)) for c in a.keys() | b.keys()))


@st.composite
def histories(draw: st.DrawFn) -> list[Transition]:
    n = draw(st.integers(0, 60))
    return [
        (
            T0 + draw(st.integers(0, 20 * DAY_MS)),
            draw(st.integers(0, 12)),
            draw(st.sampled_from([*STAGES, None])),
        )
        for _ in range(n)
    ]


def build(transitions: list[Transition], every: int, closes: list[int], last: int) -> History:
    """Transitions added day by day, days closed at the given days (in order) and up to `last`."""
    history = History(STAGES, snapshot_every=every)
    pending = sorted(transitions, key=lambda t: t[0])
    for close in [*sorted(closes), last]:
        due = [t for t in pending if t[0] // DAY_MS <= close and t[0] // DAY_MS > history.closed]
        history.add(due)
        pending = [t for t in pending if t not in due]
        history.close_until(close)
    history.add(t for t in pending if t[0] // DAY_MS > history.closed)
    return history


@settings(max_examples=200, deadline=None)
@given(
    histories(),
    st.integers(1, 4),
    st.lists(st.integers(T0 // DAY_MS, T0 // DAY_MS + 20), max_size=4),
    st.integers(T0 // DAY_MS - 1, T0 // DAY_MS + 21),
    st.lists(st.integers(-DAY_MS, 22 * DAY_MS), min_size=2, max_size=6),
)
def test_counts_members_and_flows_equal_a_replay(
    transitions: list[Transition], every: int, closes: list[int], last: int, instants: list[int]
) -> None:
    history = build(transitions, every, [c for c in closes if c <= last], last)
    for offset in instants:
        at = T0 + offset
        assert history.counts_at(at) == naive_counts(transitions, at), at
        members = {s: set(b) for s, b in history.members_at(at).items()}
        expected = replay(transitions, at)
        assert members == {s: {c for c, st_ in expected.items() if st_ == s} for s in STAGES}
    t0, t1 = sorted(T0 + o for o in instants[:2])
    assert history.flow(t0, t1) == naive_flow(transitions, t0, t1)


def test_an_instant_inside_a_day_sees_that_days_transitions_up_to_it() -> None:
    history = History(STAGES)
    history.add([(T0 + 10, 1, "a"), (T0 + 20, 1, "b"), (T0 + 30, 2, "a")])
    history.close_until(T0 // DAY_MS)
    assert history.counts_at(T0 + 9) == {"a": 0, "b": 0, "c": 0}
    assert history.counts_at(T0 + 10) == {"a": 1, "b": 0, "c": 0}
    assert history.counts_at(T0 + 25) == {"a": 0, "b": 1, "c": 0}
    assert history.counts_at(T0 + DAY_MS) == {"a": 1, "b": 1, "c": 0}
    assert history.flow(T0 + 15, T0 + 30) == {("a", "b"): 1, (NONE, "a"): 1}


def test_a_transition_of_a_closed_day_is_refused_and_unknown_stages_too() -> None:
    history = History(STAGES)
    history.close_until(T0 // DAY_MS)
    with pytest.raises(ValueError, match="closed"):
        history.add([(T0 + 5, 1, "a")])
    with pytest.raises(ValueError, match="unknown stage"):
        history.add([(T0 + DAY_MS, 1, "z")])
