"""Property: a campaign's figures are a function of the touches and orders alone. Inputs taken in
any order within the allowed lateness, in batches of any size, with repeats and redeliveries,
and with forgetting as the watermark moves, give the counters and records of evaluating every
input at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.attribution.model import (
    CONTROL,
    TREATMENT,
    Activity,
    AttributionState,
    Credit,
    Input,
    OrderIn,
    Touch,
    advance,
    credit,
    evaluate,
    fields_of,
    merge,
)

DAY = 86_400_000
T0 = 1_600_000_000_000
SPAN = 40 * DAY
LATENESS = DAY
KEEP = 6 * DAY  # refunds come within 2 days, so nothing forgotten could still change


@st.composite
def streams(draw: st.DrawFn) -> list[Input]:
    items: list[Input] = []
    for i in range(draw(st.integers(0, 8))):
        campaign = draw(st.sampled_from(["c1", "c2"]))
        group = draw(st.sampled_from([TREATMENT, CONTROL]))
        window = draw(st.sampled_from([DAY, 2 * DAY]))
        at = T0 + draw(st.integers(0, SPAN))
        items.append(Touch(f"t{i}", campaign, "r_" + campaign, group, at, window, 5, draw(st.sampled_from([0, 300]))))
    for j in range(draw(st.integers(0, 8))):
        at = T0 + draw(st.integers(0, SPAN))
        cents = draw(st.integers(1, 50_000))
        items.append(OrderIn(f"o{j}", "paid", at, cents, draw(st.booleans())))
        if draw(st.integers(0, 3)) == 0:
            items.append(OrderIn(f"o{j}", "refunded", at + draw(st.integers(0, 2 * DAY))))
    for k in range(draw(st.integers(0, 10))):
        items.append(Activity(T0 + draw(st.integers(0, SPAN))))
        del k
    return items


def _direct(items: list[Input], watermark: int) -> tuple[dict[str, int], list[tuple[str, str, bool]]]:
    state = AttributionState()
    merge(state, items)
    counters: dict[str, int] = {}
    tallies: dict[tuple[str, str], list[int]] = {}
    for tid, result in evaluate(state, watermark).items():
        touch = state.touches[tid]
        for key, value in fields_of(touch.group, result).items():
            counters[f"{touch.campaign}/{key}"] = counters.get(f"{touch.campaign}/{key}", 0) + value
        n, y, nf, yf = tallies.setdefault((touch.campaign, touch.group), [0, 0, 0, 0])
        final = int(result.final)
        tallies[(touch.campaign, touch.group)] = [
            n + 1,
            y + result.converted,
            nf + final,
            yf + final * result.converted,
        ]
    for (campaign, group), (n, y, nf, yf) in tallies.items():  # one customer: its squares, directly
        for status, (trials, converted) in (("all", (n, y)), ("final", (nf, yf))):
            prefix = f"{campaign}/{status}|{group}|"
            counters[prefix + "customers"] = int(trials > 0)
            counters[prefix + "trials_sq"] = trials * trials
            counters[prefix + "converted_sq"] = converted * converted
            counters[prefix + "cross"] = trials * converted
    return {k: v for k, v in counters.items() if v}, _ids(credit(state, watermark))


def _ids(credits: list[Credit]) -> list[tuple[str, str, bool]]:
    return [(c.order_id, c.trigger_id, c.retracted) for c in credits]


@settings(max_examples=300, deadline=None)
@given(streams(), st.randoms(use_true_random=False), st.integers(1, 6), st.booleans())
def test_figures_do_not_depend_on_arrival(items: list[Input], rnd: object, batch: int, repeat: bool) -> None:
    import random

    assert isinstance(rnd, random.Random)
    # arrival: by time, each input delayed by up to the allowed lateness; some twice
    arriving = sorted(items, key=lambda i: i.time + rnd.randint(0, LATENESS))
    if repeat and arriving:
        arriving += rnd.sample(arriving, k=min(3, len(arriving)))
    state = AttributionState()
    counters: dict[str, int] = {}
    credits: list[Credit] = []
    latest = 0
    for start in range(0, len(arriving), batch):
        part = arriving[start : start + batch]
        latest = max([latest, *(i.time for i in part)])
        changes, made = advance(state, part, latest - LATENESS, KEEP)
        credits += made
        for campaign, change in changes.items():
            for key, value in change.items():
                counters[f"{campaign}/{key}"] = counters.get(f"{campaign}/{key}", 0) + value
    end = T0 + SPAN + 10 * DAY  # every window over, everything credited
    changes, made = advance(state, [], end, KEEP)
    credits += made
    for campaign, change in changes.items():
        for key, value in change.items():
            counters[f"{campaign}/{key}"] = counters.get(f"{campaign}/{key}", 0) + value
    expected, records = _direct(items, end)
    assert {k: v for k, v in counters.items() if v} == expected
    # the records on Kafka: each credit once, and a retraction for each refunded order credited,
    # the same whether a refund came before the watermark reached its payment or after
    assert sorted((c.order_id, c.trigger_id, c.retracted) for c in credits) == sorted(records)
