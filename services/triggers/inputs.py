"""What the triggers read: records of the input topics mapped to the rules' inputs."""

from __future__ import annotations

from typing import Any

from services.common.constants import checked_cents, checked_customer, checked_id, checked_tenant, checked_time
from services.common.times import epoch_ms
from services.triggers.domain import CampaignIn, CartIn, Input, OrderIn, ProfileIn, TransitionIn

__all__ = ["FIELDS", "millis", "to_input"]

_COMMON = ("event_id", "customer_id", "tenant", "event_time")
# The fields `to_input` reads of the high-volume events; transitions and profiles are read whole.
FIELDS: dict[str, tuple[str, ...]] = {
    "crm.events.Order": (*_COMMON, "order_id", "status", "amount"),
    "crm.events.Cart": (*_COMMON, "action"),
}


millis = epoch_ms


def to_input(schema: str, record: dict[str, Any], origin: str = "") -> tuple[str, str, Input] | None:
    """(tenant, customer, input) of a decoded record; None for records no trigger reads.
    ValueError for an event time or an amount the engines cannot work with (the stager refuses
    the same, so both services agree on what an order is). `origin`: where it was read."""
    found = _to_input(schema, record, origin)
    if found is not None:
        checked_time(found[2].time)
        checked_tenant(found[0])
        checked_customer(found[1])
    return found


def _to_input(schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Input] | None:
    if schema == "crm.stage.StageTransition":
        item: Input = TransitionIn(
            record["transition_id"],
            record["model"],
            record["from_stage"],
            record["to_stage"],
            millis(record["at"]),
            record.get("seq", 0),
            origin,
            millis(record["accepted_at"]) if record.get("accepted_at") is not None else 0,
        )
    elif schema == "crm.events.Order":
        checked_cents(record["amount"])
        item = OrderIn(record["event_id"], record["order_id"], record["status"], millis(record["event_time"]), origin)
    elif schema == "crm.events.Cart":
        item = CartIn(record["event_id"], record["action"], millis(record["event_time"]), origin)
    elif schema == "crm.events.Profile":
        item = ProfileIn(
            record["event_id"],
            millis(record["event_time"]),
            dict(record.get("consent") or {}),
            record.get("timezone"),
            record.get("birthday"),
            origin,
        )
    elif schema == "crm.campaigns.Request":
        offer = record["offer"]
        given = None
        if offer is not None:
            given = (offer["kind"], checked_cents(offer["value"]) / 100, checked_cents(offer["cost"]) / 100)
        item = CampaignIn(record["request_id"], checked_id(record["campaign_id"], "campaign_id"),
                          millis(record["run_at"]), record["action"], record["channel"], record["topic"], given,
                          record["quiet_hours"], origin)  # fmt: skip
        item.rule  # noqa: B018 - a campaign no rule can express is refused here, not when deciding
    else:
        return None
    return record["tenant"], record["customer_id"], item
