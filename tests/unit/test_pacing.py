"""Replay pacing: chunks follow event time at the requested speed, whatever the event spacing."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm.pacing import BATCH, event_times, plan_chunks

DAY_MS = 86_400_000


def test_day_stamped_data_sleeps_about_one_second_per_day_at_speed_86400() -> None:
    times = [0] * 5 + [DAY_MS] * 3 + [3 * DAY_MS] * 4  # CDNOW: many events per day, days apart
    chunks = list(plan_chunks(times, 0, 86_400))
    assert [(c.start, c.end) for c in chunks] == [(0, 5), (5, 8), (8, 12)]
    assert [c.due for c in chunks] == [0.0, 1.0, 3.0]


def test_a_chunk_never_spans_more_event_time_than_speed_times_the_wall_step() -> None:
    times = list(range(0, 10_000, 10))  # an event every 10 ms of event time
    chunks = list(plan_chunks(times, 0, 10.0, step=0.1))  # 1 s of event time per chunk at most
    assert all(times[c.end - 1] - times[c.start] <= 1000 for c in chunks)
    assert [c.due for c in chunks][:3] == pytest.approx([0.0, 0.101, 0.202])  # 101 events of 10 ms each


def test_without_speed_chunks_are_batches_due_at_once_and_resume_starts_where_told() -> None:
    times = list(range(5000))
    chunks = list(plan_chunks(times, 1000, None))
    assert [(c.start, c.end) for c in chunks] == [(1000, 1000 + BATCH), (3000, 5000)]
    assert {c.due for c in chunks} == {0.0}
    resumed = list(plan_chunks([0, DAY_MS, 2 * DAY_MS], 1, 86_400))
    assert [(c.start, c.due) for c in resumed] == [(1, 0.0), (2, 1.0)]  # paced from the resume point


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=300), st.sampled_from([None, 1.0, 60.0, 86_400.0]))
def test_chunks_cover_every_event_once_in_order_with_due_times_tracking_event_time(
    raw: list[int], speed: float | None
) -> None:
    times = sorted(raw)
    chunks = list(plan_chunks(times, 0, speed, batch=50))
    assert [i for c in chunks for i in range(c.start, c.end)] == list(range(len(times)))
    for c in chunks:
        assert 0 < c.end - c.start <= 50
        if speed:
            assert times[c.end - 1] - times[c.start] <= speed * 0.1 * 1000
            assert c.due == (times[c.start] - times[0]) / 1000 / speed


def test_events_without_a_time_take_their_neighbours_time() -> None:
    events: list[dict[str, Any]] = [{"event_time": "bad"}, {"event_time": 5}, {}, {"event_time": 9}]
    assert event_times(events) == [5, 5, 5, 9]


def test_at_any_speed_a_chunk_spans_at_most_the_given_event_time() -> None:
    times = list(range(0, 3_600_000, 1000))  # an event a second for an hour
    for speed in (None, 1e9):
        chunks = list(plan_chunks(times, 0, speed, max_span_ms=150_000))
        assert all(times[c.end - 1] - times[c.start] <= 150_000 for c in chunks)
        assert chunks[0].end - chunks[0].start == 151 and sum(c.end - c.start for c in chunks) == len(times)
