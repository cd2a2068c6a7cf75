"""What attribution refuses of a trigger record: names its counters and keys cannot carry
(services/attribution/inputs.py)."""

from __future__ import annotations

from typing import Any

import pytest

from services.attribution.config import AttributionConfig
from services.attribution.inputs import to_input
from services.attribution.model import Touch


def _trigger(**override: Any) -> dict[str, Any]:
    return {"trigger_id": "t1", "tenant": "shop", "customer_id": "c1", "rule": "welcome", "campaign_id": "welcome",
            "action": "coupon", "channel": "sms", "offer": None, "cause": "e1", "decided_at": 1_000,
            "deliver_after": 2_000, "suppressed": None, **override}  # fmt: skip


def test_a_sent_decision_is_a_treatment_touch_at_its_delivery_time() -> None:
    mapped = to_input("crm.triggers.Trigger", _trigger(), "o|0|1", AttributionConfig())
    assert mapped is not None
    tenant, customer, touch = mapped
    assert (tenant, customer) == ("shop", "c1")
    assert isinstance(touch, Touch) and (touch.trigger_id, touch.time, touch.channel_cents) == ("t1", 2_000, 5)


@pytest.mark.parametrize(
    ("field", "value"),
    [("trigger_id", ""), ("trigger_id", "t\x001"), ("campaign_id", ""), ("campaign_id", "w\nx"), ("rule", "")],
)
def test_a_name_the_counters_cannot_carry_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"out of range: .*{field}"):
        to_input("crm.triggers.Trigger", _trigger(**{field: value}), "o|0|1", AttributionConfig())
