"""The behaviour index's pure parts: terms as marketers write them, the per-day encodings, and
counting "at least k over the window, less refunds" with bitmaps, against plain counting."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.audience import ExpressionError, Term, parse
from services.analytics.behaviour import (
    Act,
    at_least,
    compare,
    decode_browse,
    decode_paid,
    decode_refunds,
    encode_browse,
    encode_paid,
    encode_refunds,
    layers_of,
)
from services.analytics.engine import to_input

DAY = 86_400_000


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("paid_orders_365d >= 2", Term("paid_orders", ">=", 0, days=365, count=2)),
        ("paid_orders_30d>=2", Term("paid_orders", ">=", 0, days=30, count=2)),
        ("paid_orders_30d >2", Term("paid_orders", ">", 0, days=30, count=2)),
        ("paid_orders_7d = 1", Term("paid_orders", "=", 0, days=7, count=1)),
        ("paid_orders_7d > 0", Term("paid_orders", ">", 0, days=7, count=0)),
        ("category:123 browsed 30d", Term("category", "123", 0, days=30)),
        ('category:"home & garden" browsed 1d', Term("category", "home & garden", 0, days=1)),
    ],
)
def test_a_behaviour_term_parses_and_prints_back(text: str, term: Term) -> None:
    assert parse(text) == term
    assert parse(str(term)) == term


def test_behaviour_terms_combine_with_the_others() -> None:
    tree = parse("aipl:I & paid_orders_365d >= 2 - category:7 browsed 30d")
    assert str(tree) == "((aipl:I & paid_orders_365d >= 2) - category:7 browsed 30d)"


@pytest.mark.parametrize(
    ("text", "position", "said"),
    [
        ("paid_orders_30d", 15, "expected a comparison"),
        ("paid_orders_30d < 2", 16, "expected >=, > or ="),
        ("paid_orders_30d >= 0", 19, "a count of 0 names everyone else"),
        ("paid_orders_30d >= two", 19, "a whole number"),
        ("paid_orders_30d >= 1001", 19, "a whole number from 0 to 1000"),
        ("paid_orders_0d >= 1", 12, "a window of 1 to 3660 days"),
        ("paid_orders_99999999999999d >= 1", 12, "a window of 1 to 3660 days"),
        ("aipl:I & category:5", 19, "expected `browsed`"),
        ("category:5 bought 3d", 11, "expected `browsed`"),
        ("category:5 browsed thirty", 19, "a window in days"),
        ("category: browsed 3d", 9, "category: needs a value"),
        ("orders_30d >= 1", 0, "expected a term like"),
    ],
)
def test_a_malformed_behaviour_term_is_refused_where_it_goes_wrong(text: str, position: int, said: str) -> None:
    with pytest.raises(ExpressionError, match=said) as caught:
        parse(text)
    assert caught.value.position == position


def test_browses_and_order_changes_become_behaviours() -> None:
    browse = {"event_id": "e1", "customer_id": "c1", "tenant": "shop", "event_time": 5 * DAY + 7,
              "session_id": None, "product_id": "p", "category_id": "cat9"}  # fmt: skip
    assert to_input("crm.events.Browse", browse, "t|0|1") == ("shop", "c1", Act(5 * DAY + 7, "browse", "cat9", "t|0|1"))
    assert to_input("crm.events.Browse", {**browse, "category_id": None}, "t|0|1") is None  # no category: nothing
    order = {"event_id": "e2", "customer_id": "c1", "tenant": "shop", "event_time": DAY, "order_id": "o1",
             "amount": 12.5}  # fmt: skip
    paid = to_input("crm.events.Order", {**order, "status": "paid"}, "o|0|2")
    assert paid == ("shop", "c1", Act(DAY, "paid", "o1", "o|0|2"))
    refund = to_input("crm.events.Order", {**order, "status": "refunded"}, "o|0|3")
    assert refund is not None and refund[2] == Act(DAY, "refund", "o1", "o|0|3")
    assert to_input("crm.events.Order", {**order, "status": "created"}, "o|0|4") is None
    empty = to_input("crm.events.Order", {**order, "status": "paid", "order_id": ""}, "o|0|5")
    assert empty is not None and empty[2] == Act(DAY, "paid", "", "o|0|5")  # the stager counts it too
    assert to_input("crm.events.Browse", {**browse, "category_id": ""}, "t|0|1") is None
    with pytest.raises(ValueError, match="order_id"):
        to_input("crm.events.Order", {**order, "status": "paid", "order_id": "o" * 1025}, "o|0|5")
    with pytest.raises(ValueError, match="amount"):  # as the stager refuses it
        to_input("crm.events.Order", {**order, "status": "paid", "amount": -1.0}, "o|0|6")


def test_a_browse_day_holds_who_browsed_and_from_when() -> None:
    raw = encode_browse({3: 1000, 1: 50_000, 900: 10})
    assert list(decode_browse(raw)) == [1, 3, 900]
    assert list(decode_browse(raw, until=1000)) == [3, 900]  # by 1000 ms into the day
    assert list(decode_browse(raw, until=9)) == []


def test_a_paid_day_holds_its_layers_and_each_order_by_time() -> None:
    raw = encode_paid([(4, 100), (4, 200), (7, 150), (4, 900)])
    assert [list(b) for b in decode_paid(raw)] == [[4, 7], [4], [4]]
    assert [list(b) for b in decode_paid(raw, until=150)] == [[4, 7]]
    assert [list(b) for b in decode_paid(raw, until=200)] == [[4, 7], [4]]
    assert decode_refunds(encode_refunds([(4, 100, 5 * DAY), (8, -1, 2)])) == [(4, 100, 5 * DAY), (8, -1, 2)]


_DAYS = st.lists(st.dictionaries(st.integers(0, 40), st.integers(1, 4), max_size=12), max_size=8)


@settings(max_examples=300, deadline=None)
@given(days=_DAYS, minus=st.dictionaries(st.integers(0, 40), st.integers(1, 3), max_size=6),
       op=st.sampled_from([">=", ">", "="]), n=st.integers(0, 6))  # fmt: skip
def test_counting_with_bitmaps_equals_counting_one_by_one(
    days: list[dict[int, int]], minus: dict[int, int], op: str, n: int
) -> None:
    if n == 0 and op != ">":
        n = 1
    totals: Counter[int] = Counter()
    for day in days:
        totals.update(day)
    net = {c: totals[c] - minus.get(c, 0) for c in set(totals) | set(minus)}
    wanted = {c for c, k in net.items() if (k >= n if op == ">=" else k > n if op == ">" else k == n)}
    top = n + 1 + max(minus.values(), default=0)
    assert set(compare(at_least([layers_of(d) for d in days], top), minus, op, n)) == wanted
