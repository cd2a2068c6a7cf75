from dataclasses import asdict

from hypothesis import given, settings
from hypothesis import strategies as st

from services.stager.config import DAY_MS, StageRules
from services.stager.dedup import fingerprint, is_repeat, remember
from services.stager.rules import CustomerState, Fact, Kind, apply_fact, take
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
def test_state_survives_encoding(events: list[tuple[Kind, int, int, int]]) -> None:
    state = CustomerState()
    seen: list[tuple[int, int]] = []
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


# Layout 5 (before SICAS) of a customer who browsed, joined, favourited, paid, was credited a
# referral and has one browse pending; its clock is T0 + 5 days.
LAYOUT_5 = bytes.fromhex(
    "0580c8ddc5d52b04020101000f81e0e5a40181f0b25281f0b2528198ffcd0181a8cc7b81f0b25281f0b25204010700000080f0b252"
    "e20901048480979305336b82c0cbc902e4de80c0cbc902e89181c0cbc902e01b030302000101002a0000000180f0b2520102623200"
    "00000000000001a12ad75e"
)


def test_a_state_of_the_previous_layout_decodes_with_the_sicas_fields_empty() -> None:
    state, seen = decode_state(LAYOUT_5)
    assert (state.clock, state.events, state.paid, state.referrals) == (T0 + 5 * DAY_MS, 4, 1, 1)
    assert (state.last_browse, state.last_interest, state.last_paid) == (T0, T0 + 2 * DAY_MS, T0 + 3 * DAY_MS)
    assert state.orders == [(7, T0 + 3 * DAY_MS, 12_50, 1)]
    assert [f.event_id for f in state.pending] == ["b2"] and seen == [(T0 + 5 * DAY_MS, 42)]
    assert (state.last_product_interest, state.last_join, state.last_credit) == (0, 0, 0)
    assert state.stages == {
        "pyramid": "first_purchase",
        "aipl": "P",
        "lifecycle": "new",
        "path": None,
        "value_grid": "low_value_low_interaction",
        "sicas": None,
    }
    again = encode_state(state, seen)
    assert again[0] == 7 and decode_state(again) == (state, seen)
    # the customer's next change places it in SICAS, from what the old state kept (its paid order)
    transitions, _ = apply_fact(state, Fact("b3", Kind.BROWSE, T0 + 6 * DAY_MS), R)
    assert [(t.from_stage, t.to_stage) for t in transitions if t.model == "sicas"] == [(None, "action")]


def test_a_typical_customer_is_small() -> None:
    """Twelve events over half a day, three paid orders, a two-hour repeat horizon (the eight
    recent events carry 2-byte fingerprints, so repeats of them are known however late)."""
    state = CustomerState()
    seen: list[tuple[int, int]] = []
    for i in range(12):
        kind = [Kind.BROWSE, Kind.CART_ADD, Kind.ORDER_CREATED, Kind.ORDER_PAID][i % 4]
        fact = Fact(f"e{i}", kind, T0 + i * 3_600_000, i // 4, 2999)
        apply_fact(state, fact, R)
        seen = remember(seen, fact.time, fingerprint(fact.event_id), state.clock, 2 * 3_600_000, 64)
    assert len(encode_state(state, seen)) < 144


def test_repeats_are_recognised_within_the_horizon_only() -> None:
    seen = remember([], T0, 7, T0, DAY_MS, 64)
    assert is_repeat(seen, T0, 7)
    assert not is_repeat(seen, T0 + 1, 7)
    seen = remember(seen, T0 + DAY_MS, 8, T0 + DAY_MS, DAY_MS, 64)
    assert not is_repeat(seen, T0, 7)  # aged out
    assert is_repeat(seen, T0 + DAY_MS, 8)


def test_the_fingerprint_list_is_bounded() -> None:
    seen: list[tuple[int, int]] = []
    for i in range(100):
        seen = remember(seen, T0 + i, i, T0 + i, DAY_MS, 16)
    assert len(seen) == 16 and seen[0] == (T0 + 99, 99)


def test_a_pending_fact_keeps_when_it_was_accepted() -> None:
    """A fact waiting for the watermark carries its acceptance time to the transitions it causes
    later, in another batch or a timer's tick."""
    state, seen = decode_state(LAYOUT_5)
    state.pending = [
        Fact("b9", Kind.BROWSE, T0 + 6 * DAY_MS, origin="crm.events.browse|3|17", accepted=1_790_000_000_123)
    ]
    back, _ = decode_state(encode_state(state, seen))
    assert back.pending == state.pending
    caused = [t for t in take(back, [], T0 + 7 * DAY_MS, R).transitions if t.cause == "b9"]
    assert caused and all(t.accepted == 1_790_000_000_123 for t in caused)
