"""The services agree on what an order is (one refuses, the other does too) and on the default
trigger rules' names."""

from __future__ import annotations

from typing import Any

import pytest

from services.stager.facts import to_fact
from services.triggers.domain import OrderIn
from services.triggers.inputs import to_input


def _order(amount: float, event_time: int = 1_700_000_000_000) -> dict[str, Any]:
    return {"event_id": "e1", "customer_id": "c1", "tenant": "shop", "event_time": event_time,
            "order_id": "o1", "status": "paid", "amount": amount, "referrer_customer_id": None}  # fmt: skip


@pytest.mark.parametrize("amount", [-0.01, -5.0, float("nan"), float("inf"), float("-inf"), 1e12])
def test_an_amount_the_state_cannot_hold_is_refused_by_both_services(amount: float) -> None:
    with pytest.raises(ValueError, match="out of range: amount"):
        to_fact("crm.events.Order", _order(amount))
    with pytest.raises(ValueError, match="out of range: amount"):
        to_input("crm.events.Order", _order(amount))


@pytest.mark.parametrize("event_time", [-1, 10**14])
def test_a_time_the_state_cannot_hold_is_refused_by_both_services(event_time: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_fact("crm.events.Order", _order(10.0, event_time))
    with pytest.raises(ValueError, match="out of range"):
        to_input("crm.events.Order", _order(10.0, event_time))


def test_a_valid_order_is_taken_by_both_services() -> None:
    assert to_fact("crm.events.Order", _order(0.0)) is not None
    found = to_input("crm.events.Order", _order(25.5))
    assert found is not None and isinstance(found[2], OrderIn) and found[2].status == "paid"


def test_every_engine_refuses_a_customer_id_with_a_control_character() -> None:
    from services.attribution.config import AttributionConfig
    from services.attribution.inputs import to_input as attribution_input

    record = {"event_id": "e", "customer_id": "x\x1fy", "tenant": "t", "event_time": 1, "order_id": "o",
              "status": "paid", "amount": 1.0, "coupon_code": None}  # fmt: skip
    for read in (
        lambda: to_fact("crm.events.Order", record),
        lambda: to_input("crm.events.Order", record),
        lambda: attribution_input("crm.events.Order", record, "", AttributionConfig()),
    ):
        with pytest.raises(ValueError, match="control character"):
            read()


def test_the_shared_list_of_default_rule_names_is_the_triggers_default_table() -> None:
    from services.common.constants import DEFAULT_TRIGGER_RULES
    from services.triggers.config import DEFAULT_RULES

    assert tuple(r.name for r in DEFAULT_RULES) == DEFAULT_TRIGGER_RULES


def test_a_transition_brings_the_acceptance_time_of_its_event_to_the_triggers() -> None:
    """`accepted_at` of a transition becomes its input's `accepted`, kept with a pending input."""
    from services.triggers.domain import TransitionIn
    from services.triggers.inputs import to_input as triggers_input
    from services.triggers.state import TriggerState, decode_state, encode_state

    record = {"transition_id": "x1", "tenant": "t", "customer_id": "c1", "model": "aipl", "from_stage": None,
              "to_stage": "A", "at": 1_700_000_000_000, "cause": "e1", "seq": 1}  # fmt: skip
    found = triggers_input("crm.stage.StageTransition", {**record, "accepted_at": 1_700_000_000_250})
    assert found is not None and isinstance(found[2], TransitionIn) and found[2].accepted == 1_700_000_000_250
    timer = triggers_input("crm.stage.StageTransition", {**record, "accepted_at": None})
    assert timer is not None and isinstance(timer[2], TransitionIn) and timer[2].accepted == 0
    state = TriggerState(pending=[found[2]])
    assert decode_state(encode_state(state)).pending == [found[2]]


@pytest.mark.parametrize(("field", "said"), [("tenant", "tenant is empty"), ("customer_id", "customer_id is empty")])
def test_every_engine_refuses_an_empty_tenant_or_customer(field: str, said: str) -> None:
    """Whoever wrote it straight to Kafka: no state may be keyed by an empty tenant or customer."""
    from services.attribution.config import AttributionConfig
    from services.attribution.inputs import to_input as attribution_input

    order = {**_order(10.0), field: ""}
    for read in (to_fact, to_input, lambda s, r: attribution_input(s, r, "", AttributionConfig())):
        with pytest.raises(ValueError, match=said):
            read("crm.events.Order", order)
