"""What attribution reads: trigger decisions (touches), orders and behaviour, as the model's inputs."""

from __future__ import annotations

from typing import Any

from services.attribution.config import AttributionConfig
from services.attribution.model import CONTROL, TREATMENT, Activity, Input, OrderIn, Touch
from services.common.constants import checked_cents, checked_customer, checked_id, checked_tenant, checked_time
from services.common.times import epoch_ms

__all__ = ["CONTROL_REASONS", "FIELDS", "to_input"]

# a suppressed decision is a control touch when the customer was held out, and no touch otherwise
CONTROL_REASONS = frozenset({"holdout", "holdout:global"})
_COMMON = ("event_id", "customer_id", "tenant", "event_time")
# the fields read of the events (the trigger records are read whole)
FIELDS: dict[str, tuple[str, ...]] = {
    "crm.events.Order": (*_COMMON, "order_id", "status", "amount", "items", "coupon_code"),
    "crm.events.Browse": _COMMON,
    "crm.events.Cart": _COMMON,
    "crm.events.Follow": _COMMON,
}
_ACTIVITY = frozenset({"crm.events.Browse", "crm.events.Cart", "crm.events.Follow"})


def _named(value: str, what: str) -> str:
    """A name the counters and keys can carry: not empty, no control character."""
    if not value:
        raise ValueError(f"out of range: an empty {what}")
    return checked_id(value, what)


def to_input(
    schema: str, record: dict[str, Any], origin: str, config: AttributionConfig
) -> tuple[str, str, Input] | None:
    """(tenant, customer, input) of a decoded record; None for what attribution does not read
    (orders created or cancelled, suppressions other than a hold-out). ValueError for a time, an
    amount, a tenant or a name the state cannot hold (dead-lettered, as by every service)."""
    item: Input
    if schema == "crm.triggers.Trigger":
        reason = record["suppressed"]
        if reason is not None and reason not in CONTROL_REASONS:
            return None
        treated = reason is None
        offer = record["offer"]
        item = Touch(
            trigger_id=_named(record["trigger_id"], "trigger_id"),
            campaign=_named(record["campaign_id"], "campaign_id"),
            rule=_named(record["rule"], "rule"),
            group=TREATMENT if treated else CONTROL,
            time=checked_time(epoch_ms(record["deliver_after"])),
            window_ms=config.window_ms(record["rule"]),
            channel_cents=config.channel_cents(record["channel"]) if treated else 0,
            offer_cents=checked_cents(offer["cost"]) if treated and offer else 0,
            origin=origin,
        )
    elif schema == "crm.events.Order":
        if record["status"] not in ("paid", "refunded"):
            return None
        item = OrderIn(
            order_id=record["order_id"],
            status=record["status"],
            time=checked_time(epoch_ms(record["event_time"])),
            amount_cents=checked_cents(record["amount"]),
            coupon=bool(record.get("coupon_code")),
            origin=origin,
        )
    elif schema in _ACTIVITY:
        item = Activity(checked_time(epoch_ms(record["event_time"])), origin)
    else:
        return None
    return checked_tenant(record["tenant"]), checked_customer(record["customer_id"]), item
