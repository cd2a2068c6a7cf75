"""The attribution definitions against hand-computed cases (services/attribution/model.py and
readout.py): windows, counting an order once per campaign, refunds, costs, uplift and ROI."""

from __future__ import annotations

import random

import pytest

from services.attribution.model import (
    CONTROL,
    TREATMENT,
    Activity,
    AttributionState,
    Input,
    OrderIn,
    Result,
    Touch,
    advance,
    credit,
    evaluate,
    fields_of,
    merge,
    next_due,
    prune,
    tally_fields,
)
from services.attribution.readout import readout, two_proportion_ci

DAY = 86_400_000
W = 7 * DAY
T0 = 1_700_000_000_000


def touch(
    tid: str, at: int, campaign: str = "c1", group: str = TREATMENT, channel_cents: int = 0, offer_cents: int = 0
) -> Touch:
    return Touch(tid, campaign, "rule_" + campaign, group, at, W, channel_cents, offer_cents)


def paid(oid: str, at: int, cents: int = 1000, coupon: bool = False) -> OrderIn:
    return OrderIn(oid, "paid", at, cents, coupon)


def results(items: list[Input], watermark: int = T0) -> dict[str, Result]:
    state = AttributionState()
    merge(state, items)
    return evaluate(state, watermark)


def test_an_order_at_the_touch_time_is_outside_one_exactly_w_later_inside() -> None:
    got = results([touch("a", T0), paid("o1", T0)])
    assert got["a"] == Result(converted=False)
    got = results([touch("a", T0), paid("o1", T0 + W, 2500)])
    assert got["a"].converted and got["a"].orders == 1 and got["a"].revenue_cents == 2500
    got = results([touch("a", T0), paid("o1", T0 + W + 1)])
    assert not got["a"].converted


def test_an_order_inside_two_windows_of_one_campaign_counts_once() -> None:
    """Both trials convert; the earlier one counts the order."""
    got = results([touch("a", T0), touch("b", T0 + DAY), paid("o1", T0 + 2 * DAY, 4000)])
    assert (got["a"].converted, got["a"].orders, got["a"].revenue_cents) == (True, 1, 4000)
    assert (got["b"].converted, got["b"].orders, got["b"].revenue_cents) == (True, 0, 0)


def test_two_campaigns_touching_one_order_both_count_it() -> None:
    got = results([touch("a", T0, "c1"), touch("b", T0 + DAY, "c2"), paid("o1", T0 + 2 * DAY, 4000)])
    assert got["a"].revenue_cents == got["b"].revenue_cents == 4000


def test_a_refund_retracts_the_order_before_and_after_finalisation() -> None:
    items: list[Input] = [touch("a", T0), paid("o1", T0 + DAY, 4000)]
    refund = OrderIn("o1", "refunded", T0 + 2 * DAY)
    before = results([*items, refund], watermark=T0 + 2 * DAY)  # window still open
    assert before["a"] == Result(converted=False)
    state = AttributionState()
    merge(state, items)
    assert evaluate(state, T0 + W) == {"a": Result(final=True, converted=True, orders=1, revenue_cents=4000)}
    merge(state, [OrderIn("o1", "refunded", T0 + 20 * DAY)])  # long after the window's end
    assert evaluate(state, T0 + 20 * DAY) == {"a": Result(final=True)}


def test_a_refund_arriving_before_its_payment_still_retracts_it() -> None:
    got = results([OrderIn("o1", "refunded", T0 + 2 * DAY), touch("a", T0), paid("o1", T0 + DAY)])
    assert not got["a"].converted


def test_zero_conversions_and_no_orders() -> None:
    got = results([touch("a", T0), touch("b", T0, group=CONTROL, campaign="c1")])
    assert not got["a"].converted and not got["b"].converted
    figures = readout("c1", _sum([fields_of(TREATMENT, got["a"]), fields_of(CONTROL, got["b"])]))
    assert figures.treatment.rate == figures.control.rate == 0.0
    assert figures.uplift == 0.0 and figures.relative_uplift is None
    assert figures.treatment.average_order_value is None


def test_a_campaign_without_control_trials_has_no_uplift() -> None:
    counters = fields_of(TREATMENT, Result(final=True, converted=True, orders=1, revenue_cents=1000, cost_cents=5))
    figures = readout("c1", counters)
    assert figures.treatment.rate == 1.0 and figures.control.rate is None
    assert figures.uplift is None and figures.uplift_ci95 is None and figures.incremental_revenue is None
    assert figures.roi is None
    assert figures.as_dict()["uplift_ci95"] is None


def test_roi_with_zero_cost_is_unavailable_and_with_a_cost_is_computed() -> None:
    treated = [Result(True, True, 1, 10_000, 0), Result(True, False, 0, 0, 0)]
    control = [Result(True, False), Result(True, False)]
    counters = _sum([fields_of(TREATMENT, r) for r in treated] + [fields_of(CONTROL, r) for r in control])
    figures = readout("c1", counters)
    assert figures.incremental_revenue == 100.0 and figures.cost == 0.0 and figures.roi is None
    treated = [Result(True, True, 1, 10_000, 2_000), Result(True, False, 0, 0, 500)]
    counters = _sum([fields_of(TREATMENT, r) for r in treated] + [fields_of(CONTROL, r) for r in control])
    figures = readout("c1", counters)
    assert figures.cost == 25.0 and figures.roi == pytest.approx((100.0 - 25.0) / 25.0)


def test_offer_cost_counts_only_when_a_coupon_order_lies_in_the_window() -> None:
    items: list[Input] = [touch("a", T0, channel_cents=5, offer_cents=1000), paid("o1", T0 + DAY)]
    assert results(items)["a"].cost_cents == 5
    items = [touch("a", T0, channel_cents=5, offer_cents=1000), paid("o1", T0 + DAY, coupon=True)]
    assert results(items)["a"].cost_cents == 1005
    items = [touch("a", T0, group=CONTROL, channel_cents=5, offer_cents=1000), paid("o1", T0 + DAY, coupon=True)]
    assert results(items)["a"].cost_cents == 0


def test_interacting_means_activity_in_the_window_before_converting() -> None:
    base: list[Input] = [touch("a", T0), paid("o1", T0 + 2 * DAY)]
    assert results([*base, Activity(T0 + DAY)])["a"].interacting
    assert not results([*base, Activity(T0 + 3 * DAY)])["a"].interacting  # after converting
    assert not results([*base, Activity(T0)])["a"].interacting  # at the touch: outside
    assert results([touch("a", T0), Activity(T0 + W)])["a"].interacting  # not converting: the whole window
    assert not results([touch("a", T0), Activity(T0 + W + 1)])["a"].interacting


def test_uplift_interval_is_newcombes_hybrid_score_interval() -> None:
    """The worked examples of Newcombe (1998), method 10: 56/70 vs 48/80 gives [0.0524, 0.3339];
    9/10 vs 3/10 gives [0.1705, 0.8090]; with no conversion in either group of 10, [-0.2775, 0.2775]."""
    for (x1, n1, x2, n2), (low, high) in [
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ]:
        got = two_proportion_ci(x1, n1, x2, n2)
        assert got is not None and got == pytest.approx((low, high), abs=5e-5)


def _clustered(customers: list[tuple[int, int]], group: str) -> dict[str, int]:
    """The counters of a group whose customers had (trials, converted) each, all final."""
    counters: dict[str, int] = {}
    for n, y in customers:
        results = [Result(final=True, converted=i < y) for i in range(n)]
        for key, value in [*_sum([fields_of(group, r) for r in results]).items(),
                           *tally_fields("all", group, (0, 0), (n, y)).items(),
                           *tally_fields("final", group, (0, 0), (n, y)).items()]:  # fmt: skip
            counters[key] = counters.get(key, 0) + value
    return counters


def test_one_trial_per_customer_keeps_the_plain_interval() -> None:
    counters = _sum(
        [_clustered([(1, 1)] * 30 + [(1, 0)] * 70, TREATMENT), _clustered([(1, 1)] * 20 + [(1, 0)] * 80, CONTROL)]
    )
    figures = readout("c1", counters)
    assert (figures.treatment.customers, figures.treatment.design_effect, figures.control.design_effect) == (100, 1, 1)
    assert figures.uplift_ci95 == two_proportion_ci(30, 100, 20, 100)


def test_independent_trials_read_a_design_effect_of_exactly_one_and_no_customers_per_interaction() -> None:
    counters = _sum([_clustered([(1, 1)] * 2 + [(1, 0)] * 3, TREATMENT), _clustered([(1, 0)] * 5, CONTROL)])
    shown = readout("c1", counters).as_dict()
    assert shown["treatment"]["design_effect"] == 1.0  # not 1.0000000000000002
    assert shown["treatment"]["customers"] == 5
    # the interaction buckets keep no customers or cost: None, not a zero that reads as a figure
    assert shown["interaction"]["not_interacting"]["trials"] == 5
    assert [shown["interaction"]["not_interacting"][k] for k in ("customers", "cost", "design_effect")] == [None] * 3


def test_a_customers_trials_that_move_together_count_as_one_unit() -> None:
    """Four reminders to each customer, who converts on all four or on none, tell no more than
    one reminder each: the interval is that of 100 customers, not of 400 trials."""
    counters = _sum(
        [_clustered([(4, 4)] * 30 + [(4, 0)] * 70, TREATMENT), _clustered([(4, 4)] * 20 + [(4, 0)] * 80, CONTROL)]
    )
    figures = readout("c1", counters)
    assert figures.treatment.trials == 400 and figures.treatment.customers == 100
    assert figures.treatment.design_effect == pytest.approx(4.0) and figures.control.design_effect == pytest.approx(4.0)
    assert figures.uplift_ci95 == pytest.approx(two_proportion_ci(30, 100, 20, 100))
    assert readout("c1", counters, final_only=True).uplift_ci95 == pytest.approx(two_proportion_ci(30, 100, 20, 100))


def test_without_an_effect_the_interval_misses_zero_about_one_time_in_twenty_with_repeat_buyers() -> None:
    """Placebo campaigns (the same chance of buying in both groups) over customers of very
    different habits, each with one to six trials: the clustered interval excludes zero near 5%
    of the time; taken per trial it excluded it about three times as often."""
    rnd = random.Random(7)
    misses = plain = 0
    runs = 400
    for _ in range(runs):
        groups = {TREATMENT: [], CONTROL: []}  # type: dict[str, list[tuple[int, int]]]
        for _ in range(300):
            habit = rnd.choice([0.02, 0.1, 0.6])  # how often this customer buys in a window
            n = rnd.randint(1, 6)
            y = sum(rnd.random() < habit for _ in range(n))
            groups[rnd.choice([TREATMENT, TREATMENT, CONTROL])].append((n, y))
        counters = _sum([_clustered(groups[TREATMENT], TREATMENT), _clustered(groups[CONTROL], CONTROL)])
        figures = readout("c1", counters)
        low, high = figures.uplift_ci95 or (0.0, 0.0)
        misses += not low <= 0 <= high
        t, c = figures.treatment, figures.control
        low, high = two_proportion_ci(t.converted, t.trials, c.converted, c.trials) or (0.0, 0.0)
        plain += not low <= 0 <= high
    print(f"placebo exclusions: clustered {misses / runs:.3f}, per trial {plain / runs:.3f}")
    assert misses / runs < 0.09
    assert plain / runs > 0.09  # the case is one where clustering matters


def test_a_control_group_without_conversions_does_not_collapse_the_interval() -> None:
    """5/40 treated against 0/15 held out: the Wald interval, whose control spread is then zero,
    would be [+0.02, +0.23] and call it an effect; the score interval covers zero."""
    low, high = two_proportion_ci(5, 40, 0, 15) or (0.0, 0.0)
    assert low < 0 < high


def test_final_and_open_trials_are_reported_apart() -> None:
    counters = _sum([fields_of(TREATMENT, Result(final=True, converted=True, orders=1, revenue_cents=500)),
                     fields_of(TREATMENT, Result(final=False)), fields_of(CONTROL, Result(final=True))])  # fmt: skip
    assert (readout("c", counters).final_trials, readout("c", counters).open_trials) == (2, 1)
    assert readout("c", counters).treatment.trials == 2
    final = readout("c", counters, final_only=True)
    assert final.treatment.trials == 1 and final.treatment.rate == 1.0


def test_the_last_touch_is_credited_and_a_refund_retracts_the_record() -> None:
    state = AttributionState()
    merge(state, [touch("a", T0, "c1"), touch("b", T0 + DAY, "c2"), paid("o1", T0 + 2 * DAY, 3000)])
    assert credit(state, T0 + 2 * DAY - 1) == []  # the watermark has not reached the order
    (record,) = credit(state, T0 + 2 * DAY)
    assert (record.trigger_id, record.campaign, record.amount_cents, record.retracted) == ("b", "c2", 3000, False)
    assert credit(state, T0 + 3 * DAY) == []  # once
    merge(state, [OrderIn("o1", "refunded", T0 + 4 * DAY)])
    (back,) = credit(state, T0 + 4 * DAY)
    assert (back.trigger_id, back.retracted) == ("b", True)
    first = AttributionState()
    merge(first, [touch("a", T0, "c1"), touch("b", T0 + DAY, "c2"), paid("o1", T0 + 2 * DAY)])
    assert credit(first, T0 + 2 * DAY, first_touch=True)[0].trigger_id == "a"


def test_the_records_of_a_refunded_order_do_not_depend_on_when_the_refund_arrived() -> None:
    """A refund read before the watermark reached the payment gives the same records (the credit,
    then its retraction) as one read after the record went out."""

    def records(arrivals: list[tuple[list[Input], int]]) -> list[tuple[str, str, bool]]:
        state, out = AttributionState(), []
        for items, watermark in [*arrivals, ([], T0 + 30 * DAY)]:
            out += advance(state, items, watermark, 90 * DAY)[1]
        return [(c.order_id, c.trigger_id, c.retracted) for c in out]

    items: list[Input] = [touch("a", T0), paid("o1", T0 + DAY)]
    refund = OrderIn("o1", "refunded", T0 + 2 * DAY)
    early = records([([*items, refund], T0)])
    late = records([(items, T0 + DAY), ([refund], T0 + 3 * DAY)])
    assert early == late == [("o1", "a", False), ("o1", "a", True)]
    state = AttributionState()
    advance(state, [*items, refund], T0, 90 * DAY)
    assert next_due(state, T0, 90 * DAY) == T0 + DAY  # the payment, to credit it
    advance(state, [], T0 + DAY, 90 * DAY)
    assert next_due(state, T0 + DAY, 90 * DAY) == T0 + 2 * DAY  # the refund, to take it back


def test_control_touches_credit_no_order() -> None:
    state = AttributionState()
    merge(state, [touch("a", T0, group=CONTROL), paid("o1", T0 + DAY)])
    assert credit(state, T0 + DAY) == []


def test_next_due_is_the_window_end_then_the_time_to_forget() -> None:
    state = AttributionState()
    merge(state, [touch("a", T0), paid("o1", T0 + DAY)])
    keep = 30 * DAY
    assert next_due(state, T0, keep) == T0 + DAY  # the order to credit
    credit(state, T0 + DAY)
    assert next_due(state, T0 + DAY, keep) == T0 + W  # the trial becomes final
    assert next_due(state, T0 + W, keep) == T0 + DAY + keep  # the order can be forgotten
    assert next_due(state, T0 + W + keep, keep) is None


def test_pruning_forgets_old_trials_but_never_lets_a_kept_one_count_their_orders() -> None:
    keep = 30 * DAY
    state = AttributionState()
    # b starts inside a's window: a stays while b does, so b never takes a's order
    merge(state, [touch("a", T0), touch("b", T0 + 3 * DAY), paid("o1", T0 + 4 * DAY)])
    before = evaluate(state, T0 + 100 * DAY)
    prune(state, T0 + W + keep + 1, keep)
    assert set(state.touches) == {"a", "b"} and evaluate(state, T0 + 100 * DAY) == before
    prune(state, T0 + 3 * DAY + W + keep + 1, keep)
    assert state.touches == {} and state.orders == {} and state.activity == []


def _sum(parts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out
