"""What the triggers read: records of the input topics mapped to the rules' inputs."""

from __future__ import annotations

from typing import Any

from services.common.times import epoch_ms
from services.triggers.domain import CartIn, Input, OrderIn, ProfileIn, TransitionIn

__all__ = ["FIELDS", "MAX_TIME_MS", "millis", "to_input"]

_COMMON = ("event_id", "customer_id", "tenant", "event_time")
# The fields `to_input` reads of the high-volume events; transitions and profiles are read whole.
FIELDS: dict[str, tuple[str, ...]] = {
    "crm.events.Order": (*_COMMON, "order_id", "status"),
    "crm.events.Cart": (*_COMMON, "action"),
}


millis = epoch_ms


# Event times the rules can work with: 1970 to year ~5000 (epoch ms).
MAX_TIME_MS = 10**14


def to_input(schema: str, record: dict[str, Any], origin: str = "") -> tuple[str, str, Input] | None:
    """(tenant, customer, input) of a decoded record; None for records no trigger reads.
    ValueError for an event time the rules cannot work with. `origin`: where it was read."""
    found = _to_input(schema, record, origin)
    if found is not None and not 0 <= found[2].time < MAX_TIME_MS:
        raise ValueError(f"out of range: event time {found[2].time}")
    if found is not None and ":" in found[0]:  # it leads the customer's Redis key, up to a ':'
        raise ValueError("out of range: a tenant must not contain ':'")
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
        )
    elif schema == "crm.events.Order":
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
    else:
        return None
    return record["tenant"], record["customer_id"], item
