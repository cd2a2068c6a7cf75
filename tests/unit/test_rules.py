"""Every default rule of shared/DOMAIN.md and its time boundaries, on the pure rules."""

from typing import cast

import pytest

from services.stager.config import DAY_MS, MINUTE_MS, StageRules
from services.stager.rules import CustomerState, Fact, Kind, Transition, advance, apply_fact, next_due, stages_at

R = StageRules()
T0 = 1_500_000_000_000


class Customer:
    def __init__(self, rules: StageRules = R) -> None:
        self.state = CustomerState()
        self.rules = rules
        self.n = 0
        self.log: list[Transition] = []

    def do(self, kind: Kind, at: int, order: str = "o", cents: int = 0, referrer: str | None = None) -> str | None:
        self.n += 1
        fact = Fact(f"e{self.n}", kind, at, hash(order) & 0xFFFFFFFF, cents, referrer)
        transitions, credit = apply_fact(self.state, fact, self.rules)
        self.log += transitions
        return credit

    def at(self, when: int) -> dict[str, str | None]:
        self.log += advance(self.state, when, self.rules)
        return self.state.stages

    def stage(self, model: str, when: int) -> str | None:
        return self.at(when).get(model)


def paid(c: Customer, at: int, order: str, cents: int = 10_00, referrer: str | None = None) -> str | None:
    c.do(Kind.ORDER_CREATED, at - 1000, order)
    return c.do(Kind.ORDER_PAID, at, order, cents, referrer)


# --- brand pyramid -----------------------------------------------------------------------------
def test_pyramid_climbs_from_aware_to_loyal() -> None:
    c = Customer()
    assert c.stage("pyramid", T0) is None
    c.do(Kind.BROWSE, T0)
    assert c.state.stages["pyramid"] == "aware"
    c.do(Kind.CART_ADD, T0 + 1)
    assert c.state.stages["pyramid"] == "considering"
    paid(c, T0 + DAY_MS, "o1")
    assert c.state.stages["pyramid"] == "first_purchase"
    paid(c, T0 + 2 * DAY_MS, "o2")
    assert c.state.stages["pyramid"] == "repeat"
    paid(c, T0 + 3 * DAY_MS, "o3")
    assert c.state.stages["pyramid"] == "loyal"


@pytest.mark.parametrize("kind", [Kind.JOIN, Kind.FAVOURITE, Kind.CART_ADD])
def test_considering_needs_a_follow_favourite_or_cart_add(kind: Kind) -> None:
    c = Customer()
    c.do(kind, T0)
    assert c.state.stages["pyramid"] == "considering"


def test_cart_remove_and_browse_alone_stay_aware() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    c.do(Kind.CART_REMOVE, T0 + 1)
    assert c.state.stages["pyramid"] == "aware"


def test_advocate_needs_three_paid_orders_and_a_referral() -> None:
    c = Customer()
    c.do(Kind.REFERRAL_CREDIT, T0)
    paid(c, T0 + 10, "o1")
    paid(c, T0 + 20, "o2")
    assert c.state.stages["pyramid"] == "repeat"
    paid(c, T0 + 30, "o3")
    assert c.state.stages["pyramid"] == "advocate"


def test_first_paid_order_naming_a_referrer_credits_it_once() -> None:
    c = Customer()
    assert paid(c, T0, "o1", referrer="friend") == "friend"
    assert paid(c, T0 + 10, "o2", referrer="friend") is None


def test_refund_takes_the_order_out_of_every_count() -> None:
    c = Customer()
    paid(c, T0, "o1", 300_00)
    paid(c, T0 + 10, "o2", 300_00)
    assert c.state.stages["pyramid"] == "repeat"
    assert c.state.stages["aipl"] == "L"
    assert cast(str, c.state.stages["value_grid"]).startswith("high_value")
    c.do(Kind.ORDER_REFUNDED, T0 + 20, "o2")
    assert c.state.stages["pyramid"] == "first_purchase"
    assert c.state.stages["aipl"] == "P"
    assert cast(str, c.state.stages["value_grid"]).startswith("low_value")
    assert c.state.stages["lifecycle"] == "new"


def test_refund_before_payment_gives_the_same_result() -> None:
    c = Customer()
    c.do(Kind.ORDER_REFUNDED, T0 + 20, "o1")
    paid(c, T0, "o1", 300_00)
    assert c.state.paid == 0
    assert c.state.stages["pyramid"] == "aware"


def test_the_same_order_paid_twice_counts_once() -> None:
    c = Customer()
    paid(c, T0, "o1")
    c.do(Kind.ORDER_PAID, T0 + 5, "o1", 10_00)
    assert c.state.paid == 1


# --- AIPL --------------------------------------------------------------------------------------
def test_aipl_levels() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    assert c.state.stages["aipl"] == "A"
    c.do(Kind.FAVOURITE, T0 + 1)
    assert c.state.stages["aipl"] == "I"
    paid(c, T0 + 10, "o1")
    assert c.state.stages["aipl"] == "P"
    paid(c, T0 + 20, "o2")
    assert c.state.stages["aipl"] == "L"


def test_aipl_falls_back_at_the_exact_instant_activity_leaves_the_window() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    c.do(Kind.CART_ADD, T0 + DAY_MS)
    paid(c, T0 + 2 * DAY_MS, "o1")
    paid(c, T0 + 3 * DAY_MS, "o2")
    w = 90 * DAY_MS
    assert c.stage("aipl", T0 + 2 * DAY_MS + w - 1) == "L"
    assert c.stage("aipl", T0 + 2 * DAY_MS + w) == "P"  # first order left the window
    assert c.stage("aipl", T0 + 3 * DAY_MS + w - 1) == "P"
    # the cart add (T0 + 1 day) left before the orders did, the browse even earlier: out of the model
    assert c.stage("aipl", T0 + 3 * DAY_MS + w) is None
    timers = [t for t in c.log if t.model == "aipl" and t.cause.startswith("timer:")]
    assert [(t.from_stage, t.to_stage, t.at) for t in timers] == [
        ("L", "P", T0 + 2 * DAY_MS + w),
        ("P", None, T0 + 3 * DAY_MS + w),
    ]


def test_aipl_falls_back_from_interest_to_awareness() -> None:
    c = Customer()
    c.do(Kind.FAVOURITE, T0)
    c.do(Kind.BROWSE, T0 + 10 * DAY_MS)
    assert c.stage("aipl", T0 + 90 * DAY_MS - 1) == "I"
    assert c.stage("aipl", T0 + 90 * DAY_MS) == "A"
    assert c.stage("aipl", T0 + 100 * DAY_MS) is None


# --- SICAS -------------------------------------------------------------------------------------
W = 90 * DAY_MS


def test_sicas_climbs_from_sense_to_share() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    assert c.state.stages["sicas"] == "sense"
    c.do(Kind.FAVOURITE, T0 + 1)
    assert c.state.stages["sicas"] == "interest"
    c.do(Kind.JOIN, T0 + 2)
    assert c.state.stages["sicas"] == "connect"
    paid(c, T0 + 10, "o1")
    assert c.state.stages["sicas"] == "action"
    c.do(Kind.REFERRAL_CREDIT, T0 + 20)
    assert c.state.stages["sicas"] == "share"


@pytest.mark.parametrize(
    ("kind", "stage"),
    [
        (Kind.BROWSE, "sense"),
        (Kind.FAVOURITE, "interest"),
        (Kind.CART_ADD, "interest"),
        (Kind.JOIN, "connect"),
        (Kind.ORDER_PAID, "action"),
        (Kind.REFERRAL_CREDIT, "share"),
    ],
)
def test_each_sicas_level_holds_until_exactly_90_days_after_its_event(kind: Kind, stage: str) -> None:
    c = Customer()
    c.do(kind, T0, "o1", 10_00)
    assert c.state.stages["sicas"] == stage
    assert c.stage("sicas", T0 + W - 1) == stage
    assert c.stage("sicas", T0 + W) is None
    timers = [(t.from_stage, t.to_stage, t.at) for t in c.log if t.model == "sicas" and t.cause.startswith("timer:")]
    assert timers == [(stage, None, T0 + W)]


def test_sicas_falls_back_one_level_at_a_time_as_each_event_leaves_the_window() -> None:
    c = Customer()
    c.do(Kind.REFERRAL_CREDIT, T0)
    paid(c, T0 + DAY_MS, "o1")
    c.do(Kind.JOIN, T0 + 2 * DAY_MS)
    c.do(Kind.CART_ADD, T0 + 3 * DAY_MS)
    c.do(Kind.BROWSE, T0 + 4 * DAY_MS)
    assert c.state.stages["sicas"] == "share"
    c.at(T0 + 4 * DAY_MS + W)
    timers = [(t.from_stage, t.to_stage, t.at) for t in c.log if t.model == "sicas" and t.cause.startswith("timer:")]
    assert timers == [
        ("share", "action", T0 + W),
        ("action", "connect", T0 + DAY_MS + W),
        ("connect", "interest", T0 + 2 * DAY_MS + W),
        ("interest", "sense", T0 + 3 * DAY_MS + W),
        ("sense", None, T0 + 4 * DAY_MS + W),
    ]


def test_a_product_follow_is_interest_not_connect() -> None:
    c = Customer()
    c.do(Kind.FAVOURITE, T0)
    assert c.state.stages["sicas"] == "interest"
    assert c.state.stages["lifecycle"] == "prospect"  # nor does it make a member


def test_a_cart_remove_is_not_interest() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    c.do(Kind.CART_REMOVE, T0 + 1)
    assert c.state.stages["sicas"] == "sense"


def test_connect_lasts_the_window_after_the_follow_even_with_an_unfollow() -> None:
    c = Customer()
    c.do(Kind.CART_ADD, T0)
    c.do(Kind.JOIN, T0 + 10 * DAY_MS)
    assert c.state.stages["sicas"] == "connect"
    c.do(Kind.UNFOLLOW, T0 + 11 * DAY_MS)  # the follow happened: it still counts in the window
    assert c.stage("sicas", T0 + W) == "connect"
    assert c.stage("sicas", T0 + 10 * DAY_MS + W) is None  # the cart add left long before


def test_a_refund_takes_its_order_out_of_action_as_out_of_aipl_purchase() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    paid(c, T0 + 10, "o1")
    paid(c, T0 + 20, "o2")
    c.do(Kind.ORDER_REFUNDED, T0 + 30, "o2")
    assert c.state.stages["sicas"] == "action"  # o1 still counts
    c.do(Kind.ORDER_REFUNDED, T0 + 40, "o1")
    assert c.state.stages["sicas"] == "sense"
    assert c.state.stages["aipl"] == "A"


def test_only_an_order_paid_counts_as_action() -> None:
    c = Customer()
    c.do(Kind.ORDER_CREATED, T0, "o1")
    c.do(Kind.ORDER_CANCELLED, T0 + 1, "o1")
    assert c.state.stages["sicas"] is None


def test_a_referrer_seen_nowhere_else_shares() -> None:
    c = Customer()
    c.do(Kind.REFERRAL_CREDIT, T0)
    assert c.state.stages == {**dict.fromkeys(c.state.stages), "sicas": "share"}


def test_a_credit_older_than_the_window_at_the_clock_is_no_share() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0 + 100 * DAY_MS)
    c.do(Kind.REFERRAL_CREDIT, T0)  # late: it left the window before the clock
    assert c.state.stages["sicas"] == "sense"
    assert c.state.referrals == 1  # all-time counts still move


def test_the_configured_sicas_window_is_honoured_apart_from_aipl() -> None:
    c = Customer(StageRules(sicas_window_ms=10 * DAY_MS))
    c.do(Kind.BROWSE, T0)
    paid(c, T0 + DAY_MS, "o1")
    assert c.stage("sicas", T0 + 11 * DAY_MS - 1) == "action"
    assert c.stage("sicas", T0 + 11 * DAY_MS) is None  # the browse left a day earlier
    assert c.state.stages["aipl"] == "P"  # the AIPL window is still 90 days


def test_orders_are_kept_for_a_sicas_window_longer_than_the_others() -> None:
    rules = StageRules(sicas_window_ms=400 * DAY_MS)
    assert rules.order_memory_ms == 400 * DAY_MS
    c = Customer(rules)
    paid(c, T0, "o1")
    assert c.stage("sicas", T0 + 400 * DAY_MS - 1) == "action"
    assert c.stage("sicas", T0 + 400 * DAY_MS) is None


# --- lifecycle ---------------------------------------------------------------------------------
def test_prospect_until_joining_then_new() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    assert c.state.stages["lifecycle"] == "prospect"
    c.do(Kind.FAVOURITE, T0 + 1)  # a favourite is no membership
    assert c.state.stages["lifecycle"] == "prospect"
    c.do(Kind.JOIN, T0 + 2)
    assert c.state.stages["lifecycle"] == "new"


def test_first_paid_order_makes_a_member() -> None:
    c = Customer()
    paid(c, T0, "o1")
    assert c.state.stages["lifecycle"] == "new"
    assert c.state.member_since == T0


def test_developing_and_mature_by_paid_orders() -> None:
    c = Customer()
    for i in range(1, 5):
        paid(c, T0 + i * DAY_MS, f"o{i}")
        expected = {1: "new", 2: "developing", 3: "developing", 4: "mature"}[i]
        assert c.state.stages["lifecycle"] == expected


def test_declining_from_exactly_90_days_after_the_last_paid_order() -> None:
    c = Customer()
    paid(c, T0, "o1")
    c.do(Kind.BROWSE, T0 + 30 * DAY_MS)  # activity, but no purchase
    assert c.stage("lifecycle", T0 + 90 * DAY_MS - 1) == "new"
    assert c.stage("lifecycle", T0 + 90 * DAY_MS) == "declining"


def test_member_without_purchase_does_not_decline() -> None:
    c = Customer()
    c.do(Kind.JOIN, T0)
    assert c.stage("lifecycle", T0 + 179 * DAY_MS) == "new"


def test_churned_exactly_180_days_after_the_last_event() -> None:
    c = Customer()
    paid(c, T0, "o1")
    c.do(Kind.BROWSE, T0 + 10 * DAY_MS)
    assert c.stage("lifecycle", T0 + 190 * DAY_MS - 1) == "declining"
    assert c.stage("lifecycle", T0 + 190 * DAY_MS) == "churned"


def test_a_new_purchase_brings_a_declining_customer_back() -> None:
    c = Customer()
    paid(c, T0, "o1")
    assert c.stage("lifecycle", T0 + 100 * DAY_MS) == "declining"
    paid(c, T0 + 101 * DAY_MS, "o2")
    assert c.state.stages["lifecycle"] == "developing"


# --- shopping path -----------------------------------------------------------------------------
def test_path_follows_one_session() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    assert c.state.stages["path"] == "browsing"
    c.do(Kind.CART_ADD, T0 + MINUTE_MS)
    assert c.state.stages["path"] == "selecting"
    c.do(Kind.ORDER_CREATED, T0 + 2 * MINUTE_MS, "o1")
    assert c.state.stages["path"] == "ordered_unpaid"
    c.do(Kind.ORDER_PAID, T0 + 3 * MINUTE_MS, "o1", 100)
    assert c.state.stages["path"] == "paid"


def test_session_ends_30_minutes_after_its_last_event() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    c.do(Kind.CART_ADD, T0 + 20 * MINUTE_MS)
    assert c.stage("path", T0 + 50 * MINUTE_MS - 1) == "selecting"
    assert c.stage("path", T0 + 50 * MINUTE_MS) is None


def test_a_new_session_starts_over() -> None:
    c = Customer()
    c.do(Kind.CART_ADD, T0)
    c.do(Kind.BROWSE, T0 + 30 * MINUTE_MS)  # exactly 30 minutes later: a new session
    assert c.state.stages["path"] == "browsing"


# --- value x interaction -----------------------------------------------------------------------
def test_value_is_high_from_500_paid_in_365_days() -> None:
    c = Customer()
    paid(c, T0, "o1", 499_99)
    assert c.state.stages["value_grid"] == "low_value_low_interaction"
    paid(c, T0 + DAY_MS, "o2", 1)
    assert c.state.stages["value_grid"] == "high_value_low_interaction"
    assert c.stage("value_grid", T0 + 365 * DAY_MS - 1) == "high_value_low_interaction"
    assert c.stage("value_grid", T0 + 365 * DAY_MS) == "low_value_low_interaction"


def test_interaction_is_high_from_5_events_in_30_days() -> None:
    c = Customer()
    for i in range(4):
        c.do(Kind.BROWSE, T0 + i * DAY_MS)
    assert c.state.stages["value_grid"] == "low_value_low_interaction"
    c.do(Kind.BROWSE, T0 + 4 * DAY_MS)
    assert c.state.stages["value_grid"] == "low_value_high_interaction"
    assert c.stage("value_grid", T0 + 30 * DAY_MS - 1) == "low_value_high_interaction"
    assert c.stage("value_grid", T0 + 30 * DAY_MS) == "low_value_low_interaction"


# --- clock -------------------------------------------------------------------------------------
def test_a_late_event_is_judged_at_the_customers_clock() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0 + 200 * DAY_MS)
    c.do(Kind.ORDER_PAID, T0, "old", 100)  # far older than the AIPL window at the clock
    assert c.state.stages["aipl"] == "A"
    assert c.state.stages["pyramid"] == "first_purchase"  # all-time counters still move


def test_next_due_is_the_earliest_boundary() -> None:
    c = Customer()
    c.do(Kind.BROWSE, T0)
    assert next_due(c.state, R) == T0 + 30 * MINUTE_MS  # session end comes first


def test_no_events_no_stage() -> None:
    assert set(stages_at(CustomerState(), T0, R).values()) == {None}


def test_a_tenant_with_a_colon_cannot_become_a_fact() -> None:
    import pytest as _pytest

    from services.stager.facts import to_fact

    record = {"event_id": "e", "customer_id": "y", "tenant": "R:x", "event_time": 1}
    with _pytest.raises(ValueError, match="tenant"):
        to_fact("crm.events.Browse", record)
