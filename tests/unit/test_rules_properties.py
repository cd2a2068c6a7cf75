"""Properties of the rules: arrival order and duplicates do not change the final stages."""

from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from services.stager.config import DAY_MS, MINUTE_MS, StageRules
from services.stager.rules import MODELS, CustomerState, Fact, Kind, advance, apply_fact, replay

R = StageRules()
T0 = 1_500_000_000_000
SPAN = 400 * DAY_MS
BEHAVIOUR = [k for k in Kind if k not in (Kind.ORDER_PAID, Kind.ORDER_REFUNDED, Kind.REFERRAL_CREDIT)]


@st.composite
def histories(draw):
    """Facts of one customer: behaviour spread over 400 days, bursts within sessions, orders paid
    and sometimes refunded within a 60-day return window."""
    facts = []
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


def _facts(state):
    """Everything the state knows, without `seq` (how many transitions it took to get there)."""
    out = asdict(state)
    out.pop("seq")
    return out


def in_time_order(facts, until):
    return replay(sorted(facts, key=lambda f: (f.time, f.event_id)), until, R)


LATENESS = 2 * 60 * MINUTE_MS


@settings(max_examples=300, deadline=None)
@given(facts=histories(), data=st.data())
def test_any_arrival_order_within_lateness_and_any_duplication_gives_the_same_final_state(facts, data):
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
def test_timers_fired_along_the_way_change_nothing(facts, data):
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
def test_pyramid_never_moves_down_without_a_refund(facts):
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
