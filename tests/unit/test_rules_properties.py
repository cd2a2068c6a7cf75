"""Properties of the rules: arrival order and duplicates do not change the final stages."""

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.stager.config import DAY_MS, MINUTE_MS, StageRules
from services.stager.rules import MODELS, CustomerState, Fact, Kind, advance, apply_fact, next_wake, replay, take
from services.stager.statecodec import decode_state, encode_state

R = StageRules()
T0 = 1_500_000_000_000
SPAN = 400 * DAY_MS
BEHAVIOUR = [k for k in Kind if k not in (Kind.ORDER_PAID, Kind.ORDER_REFUNDED, Kind.REFERRAL_CREDIT)]


@st.composite
def histories(draw: st.DrawFn) -> list[Fact]:
    """Facts of one customer: behaviour spread over 400 days, bursts within sessions, orders paid
    and sometimes refunded within a 60-day return window."""
    facts: list[Fact] = []
    n = draw(st.integers(1, 40))
    for i in range(n):
        base = draw(st.integers(0, SPAN))
        kind = draw(st.sampled_from(BEHAVIOUR))
        facts.append(Fact(f"b{i}", kind, T0 + base + draw(st.integers(0, 20)) * MINUTE_MS, draw(st.integers(0, 3))))
    for j in range(draw(st.integers(0, 6))):
        at = T0 + draw(st.integers(0, SPAN))
        cents = draw(st.integers(0, 400_00))
        facts.append(Fact(f"p{j}", Kind.ORDER_PAID, at, 100 + j, cents))
        if draw(st.booleans()):
            facts.append(Fact(f"p{j}-again", Kind.ORDER_PAID, at + 1000, 100 + j, cents))
        if draw(st.integers(0, 3)) == 0:
            facts.append(Fact(f"r{j}", Kind.ORDER_REFUNDED, at + draw(st.integers(0, 60 * DAY_MS)), 100 + j))
    for k in range(draw(st.integers(0, 2))):
        facts.append(Fact(f"c{k}", Kind.REFERRAL_CREDIT, T0 + draw(st.integers(0, SPAN))))
    return facts


def _facts(state: CustomerState) -> dict[str, Any]:
    """Everything the state knows, without `seq` (how many transitions it took to get there)."""
    out = asdict(state)
    out.pop("seq")
    return out


def in_time_order(facts: list[Fact], until: int) -> CustomerState:
    return replay(sorted(facts, key=lambda f: (f.time, f.event_id)), until, R)


LATENESS = 2 * 60 * MINUTE_MS


@settings(max_examples=300, deadline=None)
@given(facts=histories(), data=st.data())
def test_any_arrival_order_within_lateness_and_any_duplication_gives_the_same_final_state(
    facts: list[Fact], data: st.DataObject
) -> None:
    """Each fact (and each duplicate of it) arrives at most LATENESS after its event time."""
    until = T0 + SPAN + 200 * DAY_MS
    expected = in_time_order(facts, until)
    copies = facts + data.draw(st.lists(st.sampled_from(facts), max_size=10))
    delays = data.draw(st.lists(st.integers(0, LATENESS), min_size=len(copies), max_size=len(copies)))
    arrival_times = [f.time + d for f, d in zip(copies, delays, strict=True)]
    arrival = [f for _, _, f in sorted(zip(arrival_times, range(len(copies)), copies, strict=True))]
    got = replay(arrival, until, R)
    assert got.stages == expected.stages
    assert _facts(got) == _facts(expected)


@settings(max_examples=200, deadline=None)
@given(facts=histories(), data=st.data())
def test_timers_fired_along_the_way_change_nothing(facts: list[Fact], data: st.DataObject) -> None:
    """Live processing fires timers whenever the watermark moves; the result equals one evaluation."""
    ordered = sorted(facts, key=lambda f: (f.time, f.event_id))
    until = T0 + SPAN + 200 * DAY_MS
    live, seen = CustomerState(), set()
    for fact in ordered:
        if data.draw(st.booleans()):
            advance(live, data.draw(st.integers(live.clock, fact.time)), R)
        if fact.event_id not in seen:
            seen.add(fact.event_id)
            apply_fact(live, fact, R)
    advance(live, until, R)
    assert _facts(live) == _facts(in_time_order(facts, until))


@settings(max_examples=200, deadline=None)
@given(facts=histories())
def test_pyramid_never_moves_down_without_a_refund(facts: list[Fact]) -> None:
    facts = [f for f in facts if f.kind != Kind.ORDER_REFUNDED]
    ladder = [None, "aware", "considering", "first_purchase", "repeat", "loyal", "advocate"]
    state, seen = CustomerState(), set()
    previous = 0
    for fact in sorted(facts, key=lambda f: f.time):
        if fact.event_id in seen:
            continue
        seen.add(fact.event_id)
        apply_fact(state, fact, R)
        level = ladder.index(state.stages.get("pyramid"))
        if state.stages.get("pyramid") != "advocate" and previous == ladder.index("advocate"):
            raise AssertionError("left advocate")
        assert level >= previous or (previous == ladder.index("advocate") and level == ladder.index("loyal"))
        previous = level
    assert set(state.stages) == set(MODELS)


LATENESS = 5 * MINUTE_MS


@settings(max_examples=150, deadline=None)
@given(histories(), st.data())
def test_transitions_do_not_depend_on_arrival_order_or_batches_within_the_lateness(
    facts: list[Fact], data: st.DataObject
) -> None:
    """Facts arriving out of order by up to the allowed lateness, cut into any batches, each
    batch followed by the watermark (latest time read less the lateness), give exactly the
    transitions of the facts applied in event-time order."""
    reference = CustomerState()
    expected = take(reference, facts, max(f.time for f in facts), R).transitions

    delays = [data.draw(st.integers(0, LATENESS)) for _ in facts]
    arrival = [f for _, f in sorted(zip(delays, facts, strict=True), key=lambda x: x[1].time + x[0])]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(arrival) - 1)), max_size=6)))
    state, got, latest, start = CustomerState(), [], 0, 0
    for end in [*cuts, len(arrival)]:
        batch = arrival[start:end]
        start = end
        if not batch:
            continue
        latest = max(latest, *(f.time for f in batch))
        got += take(state, batch, latest - LATENESS, R).transitions
    got += take(state, [], max(f.time for f in facts), R).transitions
    assert got == expected
    assert asdict(state) == asdict(reference)


def test_a_fact_past_the_watermark_waits_and_survives_encoding() -> None:
    state = CustomerState()
    early = Fact("e1", Kind.BROWSE, T0 + 10 * MINUTE_MS)
    assert take(state, [early], T0, R).transitions == []
    assert state.pending == [early]
    assert next_wake(state, R) == early.time
    back, _ = decode_state(encode_state(state, []))
    assert back.pending == [early]
    done = take(back, [], early.time, R)
    assert [t.to_stage for t in done.transitions if t.model == "pyramid"] == ["aware"] and not back.pending


def test_a_fact_the_rules_cannot_apply_is_rejected_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.stager import rules

    real = rules._update

    def choking(s: CustomerState, fact: Fact, r: StageRules) -> str | None:
        if fact.event_id == "bad":
            s.paid += 100  # a half-made change, then the failure
            raise RuntimeError("cannot apply")
        return real(s, fact, r)

    monkeypatch.setattr(rules, "_update", choking)
    good = [Fact("p0", Kind.ORDER_PAID, T0, 1, 100), Fact("b1", Kind.BROWSE, T0 + 5 * MINUTE_MS)]
    bad = Fact("bad", Kind.ORDER_PAID, T0 + MINUTE_MS, 2, 100, origin="crm.events.order|3|17")
    with_bad, without = CustomerState(), CustomerState()
    outcome = take(with_bad, [*good, bad], T0 + DAY_MS, R)
    assert [(f.origin, reason) for f, reason in outcome.rejected] == [
        ("crm.events.order|3|17", "unprocessable: RuntimeError: cannot apply")
    ]
    assert outcome.transitions == take(without, good, T0 + DAY_MS, R).transitions
    assert asdict(with_bad) == asdict(without)


@settings(max_examples=100, deadline=None)
@given(histories(), st.data())
def test_a_repeat_arriving_any_time_later_changes_nothing(facts: list[Fact], data: st.DataObject) -> None:
    """However late a repeated event comes (within the longest window the state keeps), neither
    the state's stages nor any transition change."""
    state = CustomerState()
    end = max(f.time for f in facts)
    take(state, facts, end, R)
    later = end + data.draw(st.integers(0, 200 * DAY_MS))
    take(state, [], later, R)
    before = asdict(state)
    repeats = data.draw(st.lists(st.sampled_from(facts), min_size=1, max_size=5))
    kept = [f for f in repeats if f.time > state.clock - R.order_memory_ms]
    outcome = take(state, repeats, later, R)
    assert outcome.transitions == []
    after = asdict(state)
    for counter in ("events", "interest"):  # counters whose only use is "at least one"
        before.pop(counter), after.pop(counter)
    # a refund repeated after its order left the state leaves a tombstone, which counts nowhere
    after["orders"] = [o for o in after["orders"] if o in before["orders"] or o[2:] != (0, 2)]
    assert after == before
    assert len(outcome.rejected) == len(repeats) - len(kept)
    assert all(reason.startswith("too_late") for _, reason in outcome.rejected)


def _sicas_by_definition(facts: list[Fact], now: int, window: int) -> str | None:
    """SICAS at `now` straight from the text: the highest level with an event in (now - W, now]."""
    past = [f for f in facts if f.time <= now]
    refunded = {f.order_key for f in past if f.kind == Kind.ORDER_REFUNDED}
    first_paid: dict[int, int] = {}
    for f in sorted(past, key=lambda f: f.time):
        if f.kind == Kind.ORDER_PAID:
            first_paid.setdefault(f.order_key, f.time)
    paid = [t for key, t in first_paid.items() if key not in refunded]

    def any_in(times: Iterable[int]) -> bool:
        return any(now - t < window for t in times)

    if any_in(f.time for f in past if f.kind == Kind.REFERRAL_CREDIT):
        return "share"
    if any_in(paid):
        return "action"
    if any_in(f.time for f in past if f.kind == Kind.JOIN):
        return "connect"
    if any_in(f.time for f in past if f.kind in (Kind.FAVOURITE, Kind.CART_ADD)):
        return "interest"
    if any_in(f.time for f in past if f.kind == Kind.BROWSE):
        return "sense"
    return None


@settings(max_examples=150, deadline=None)
@given(facts=histories(), data=st.data())
def test_sicas_at_any_instant_is_its_definition_including_the_window_boundaries(
    facts: list[Fact], data: st.DataObject
) -> None:
    window = R.sicas_window_ms
    edges = [f.time + window + d for f in facts for d in (-1, 0)]
    instants = data.draw(st.lists(st.sampled_from(edges) | st.integers(T0, T0 + SPAN + window), max_size=8))
    for now in instants:
        state = replay(sorted((f for f in facts if f.time <= now), key=lambda f: (f.time, f.event_id)), now, R)
        assert state.stages.get("sicas") == _sicas_by_definition(facts, now, window), now
