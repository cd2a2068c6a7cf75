from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from services.stager.config import DAY_MS, StageRules
from services.stager.dedup import fingerprint, is_repeat, remember
from services.stager.rules import CustomerState, Fact, Kind, apply_fact
from services.stager.statecodec import decode_state, encode_state

R = StageRules()
T0 = 1_500_000_000_000


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(Kind)), st.integers(0, 500 * DAY_MS), st.integers(0, 5), st.integers(0, 10**6)),
        max_size=30,
    )
)
def test_state_survives_encoding(events):
    state = CustomerState()
    seen = []
    for i, (kind, dt, order, cents) in enumerate(events):
        fact = Fact(f"e{i}", kind, T0 + dt, order, cents)
        apply_fact(state, fact, R)
        seen = remember(seen, fact.time, fingerprint(fact.event_id), state.clock, DAY_MS, 64)
    back, back_seen = decode_state(encode_state(state, seen))
    expected = asdict(state)
    got = asdict(back)
    assert {m: got["stages"].get(m) for m in expected["stages"]} == expected["stages"]
    expected.pop("stages"), got.pop("stages")
    assert got == expected
    assert back_seen == seen


def test_a_typical_customer_is_small():
    """Twelve events over half a day, three paid orders, a two-hour repeat horizon (the eight
    recent events carry 2-byte fingerprints, so repeats of them are known however late)."""
    state = CustomerState()
    seen = []
    for i in range(12):
        kind = [Kind.BROWSE, Kind.CART_ADD, Kind.ORDER_CREATED, Kind.ORDER_PAID][i % 4]
        fact = Fact(f"e{i}", kind, T0 + i * 3_600_000, i // 4, 2999)
        apply_fact(state, fact, R)
        seen = remember(seen, fact.time, fingerprint(fact.event_id), state.clock, 2 * 3_600_000, 64)
    assert len(encode_state(state, seen)) < 144


def test_repeats_are_recognised_within_the_horizon_only():
    seen = remember([], T0, 7, T0, DAY_MS, 64)
    assert is_repeat(seen, T0, 7)
    assert not is_repeat(seen, T0 + 1, 7)
    seen = remember(seen, T0 + DAY_MS, 8, T0 + DAY_MS, DAY_MS, 64)
    assert not is_repeat(seen, T0, 7)  # aged out
    assert is_repeat(seen, T0 + DAY_MS, 8)


def test_the_fingerprint_list_is_bounded():
    seen = []
    for i in range(100):
        seen = remember(seen, T0 + i, i, T0 + i, DAY_MS, 16)
    assert len(seen) == 16 and seen[0] == (T0 + 99, 99)
