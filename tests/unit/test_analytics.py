"""The analytics service's pure parts: what it takes of a transition, the Data Bank's flow view,
instants as marketers write them, and API keys scoped to tenants."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from pyroaring import BitMap

from services.analytics.audience import ExpressionError, evaluate, parse
from services.analytics.engine import Facts, Move, to_input
from services.analytics.query import Flow, csv_field
from services.analytics.settings import AnalyticsSettings
from services.common.times import iso, parse_instant


def _transition(**override: Any) -> dict[str, Any]:
    return {"tenant": "shop", "customer_id": "c1", "model": "aipl", "to_stage": "I",
            "at": datetime(2024, 5, 1, tzinfo=UTC), **override}  # fmt: skip


def test_a_transition_becomes_a_move_placed_by_its_offset() -> None:
    assert to_input("crm.stage.StageTransition", _transition(), "crm.stage.transitions|3|41") == (
        "shop", "c1", Move(1_714_521_600_000, "aipl", "I", 41, "crm.stage.transitions|3|41")
    )  # fmt: skip
    left = to_input("crm.stage.StageTransition", _transition(to_stage=None), "t|0|1")
    assert left is not None and isinstance(left[2], Move) and left[2].stage is None  # left the model


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ({"model": "rfm"}, "unknown model 'rfm'"),
        ({"to_stage": "loyal"}, "'loyal' is no stage of aipl"),
        ({"tenant": "a:b"}, "tenant"),
        ({"customer_id": "c\x00"}, "customer_id"),
        ({"at": datetime(1960, 1, 1, tzinfo=UTC)}, "event time"),
    ],
)
def test_what_no_history_can_hold_is_refused(override: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError, match=f"out of range: .*{said}"):
        to_input("crm.stage.StageTransition", _transition(**override), "t|0|1")


def test_the_flow_matrix_has_stayers_on_the_diagonal_and_none_for_new_and_lost() -> None:
    flow = Flow(("A", "I", "P"), {("A", "A"): 5, ("A", "I"): 3, ("A", "P"): 2, ("none", "A"): 4, ("I", "none"): 1})
    assert flow.matrix() == [[5, 3, 2, 0], [0, 0, 0, 1], [0, 0, 0, 0], [4, 0, 0, 0]]
    # A -> I: of A's 10 at the start, 5 were in I or above at the end (one who skipped I converted too)
    assert flow.adjacent_rates() == {"A->I": 0.5, "I->P": 0.0}
    assert Flow(("A", "I"), {}).adjacent_rates() == {"A->I": None}  # no base: no rate


@pytest.mark.parametrize(
    ("text", "ms"),
    [("1997-10-01", 875_664_000_000), ("1997-10-01T00:00:00Z", 875_664_000_000),
     ("1997-10-01T08:00:00+08:00", 875_664_000_000), ("875664000000", 875_664_000_000)],
)  # fmt: skip
def test_an_instant_is_a_date_an_iso_instant_with_its_zone_or_epoch_ms(text: str, ms: int) -> None:
    assert parse_instant(text) == ms


@pytest.mark.parametrize(("text", "said"), [("1997-10-01T00:00", "time zone"), ("yesterday", "not an instant")])
def test_an_instant_that_does_not_parse_says_what_would(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        parse_instant(text)


def test_api_keys_are_scoped_to_tenants() -> None:
    settings = AnalyticsSettings(analytics_api_keys=SecretStr("k1:shop|outlet, k2:*"))
    assert settings.api_keys() == {b"k1": frozenset({"shop", "outlet"}), b"k2": None}


@pytest.mark.parametrize("keys", ["k1", "k1:", ":shop", "k1:|"])
def test_an_api_key_without_its_tenants_is_refused(keys: str) -> None:
    with pytest.raises(ValueError, match="CRM_ANALYTICS_API_KEYS entry 1"):
        AnalyticsSettings(analytics_api_keys=SecretStr(keys)).api_keys()


# --- set algebra ---------------------------------------------------------------------------------
_NAMES = ["aipl:I", "aipl:P", "city:Shanghai", "gender:f", "follow:brand", "lifecycle:churned"]


@st.composite
def _trees(draw: st.DrawFn, depth: int = 3) -> str:
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(_NAMES))
    op = draw(st.sampled_from(["&", "|", "-"]))
    return f"({draw(_trees(depth - 1))} {op} {draw(_trees(depth - 1))})"


@given(
    a=_trees(),
    b=_trees(),
    members=st.fixed_dictionaries({n: st.sets(st.integers(0, 60), max_size=40) for n in _NAMES}),
)
@settings(max_examples=200, deadline=None)
def test_set_algebra_holds_for_any_expressions(a: str, b: str, members: dict[str, set[int]]) -> None:
    """A & B ⊆ A, (A - B) ∩ B = ∅, and De Morgan on the universe of every customer."""

    def value(text: str) -> set[int]:
        return set(evaluate(parse(text), lambda term: BitMap(members[str(term)])))

    universe = set().union(*members.values())
    everyone = " | ".join(_NAMES)
    assert value(f"{a} & {b}") <= value(a)
    assert not value(f"{a} - {b}") & value(b)
    assert value(f"({everyone}) - ({a} | {b})") == (universe - value(a)) & (universe - value(b))
    assert value(f"({everyone}) - ({a} & {b})") == (universe - value(a)) | (universe - value(b))
    assert value(f"{a} | {b}") == value(a) | value(b)


def test_and_binds_tighter_than_or_and_but_not() -> None:
    assert str(parse("aipl:I | aipl:P & city:x")) == "(aipl:I | (aipl:P & city:x))"
    assert str(parse("aipl:I - aipl:P - city:x")) == "((aipl:I - aipl:P) - city:x)"
    assert str(parse('city:"New York" & age_band:25-34')) == '(city:"New York" & age_band:"25-34")'


@pytest.mark.parametrize(
    ("text", "said", "position"),
    [
        ("", "an empty expression", 0),
        ("aipl:I &", "ends where a term was expected", 8),
        ("aipl:I & & city:x", "expected a term, found '&'", 9),
        ("(aipl:I | city:x", "'(' is never closed", 0),
        ("aipl:I )", "')' without its '('", 7),
        ("aipl:I city:x", "expected an operator", 7),
        ("aipl:Q", "'Q' is no stage of aipl", 5),
        ("rfm:x", "unknown term 'rfm'", 0),
        ("follow:product", "follow: one of brand", 7),
        ("member_since:24", "member_since: a year", 13),
        ("(" * 40 + "aipl:I" + ")" * 40, "parentheses nest more than 32 deep", 32),
        (" | ".join(["aipl:I"] * 70), "more than 64 terms", 576),
        ('city:"New York"x', "a quoted value must be the whole value", 5),
        ("aipl:I & city:", "city: needs a value", 14),
    ],
)
def test_a_malformed_expression_says_where(text: str, said: str, position: int) -> None:
    with pytest.raises(ExpressionError) as raised:
        parse(text)
    assert said in str(raised.value) and raised.value.position == position


@pytest.mark.parametrize(
    ("value", "field"),
    [("c1", "c1"), ("a,b", '"a,b"'), ('say "hi"', '"say ""hi"""'), ("=1+2", "'=1+2"), ("+86,1", "\"'+86,1\""),
     ("@SUM(A1)", "'@SUM(A1)"), ("-3", "'-3")],
)  # fmt: skip
def test_an_exported_field_is_quoted_and_never_read_as_a_formula(value: str, field: str) -> None:
    assert csv_field(value) == field


def test_an_empty_attribute_clears_it_and_keeps_the_others() -> None:
    record = {"event_id": "p1", "tenant": "shop", "customer_id": "c1", "event_time": datetime(2024, 5, 1, tzinfo=UTC),
              "city": "", "gender": "f", "age_band": None, "member_since": None}  # fmt: skip
    mapped = to_input("crm.events.Profile", record, "t|0|1")
    assert mapped is not None and isinstance(mapped[2], Facts)
    assert mapped[2].values == (("city", None), ("gender", "f"))


@pytest.mark.parametrize(("override", "said"), [({"tenant": ""}, "tenant"), ({"customer_id": ""}, "customer_id"),
                                                ({"customer_id": "c" * 2000}, "customer_id")])  # fmt: skip
def test_an_id_no_history_can_hold_is_refused(override: dict[str, Any], said: str) -> None:
    with pytest.raises(ValueError, match=f"out of range: {said}"):
        to_input("crm.stage.StageTransition", _transition(**override), "t|0|1")


@pytest.mark.parametrize("text", ["\u0661\u0662\u0663", "1" * 40])
def test_only_ascii_digits_of_a_sane_length_are_epoch_ms(text: str) -> None:
    with pytest.raises(ValueError, match="not an instant"):
        parse_instant(text)


def test_instants_are_shown_with_milliseconds_only_when_they_have_some() -> None:
    assert iso(875_664_000_000) == "1997-10-01T00:00:00Z"
    assert iso(875_664_000_999) == "1997-10-01T00:00:00.999Z"
