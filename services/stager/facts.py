"""Decoded Avro records -> (tenant, customer, Fact): the only place that knows event fields."""

from __future__ import annotations

import zlib
from typing import Any

from services.common.constants import checked_cents, checked_customer, checked_tenant, checked_time
from services.common.times import epoch_ms
from services.stager.rules import Fact, Kind

__all__ = ["FIELDS", "to_fact", "to_millis"]

_ORDER = {
    "created": Kind.ORDER_CREATED,
    "paid": Kind.ORDER_PAID,
    "cancelled": Kind.ORDER_CANCELLED,
    "refunded": Kind.ORDER_REFUNDED,
}
_JOIN_TARGETS = frozenset({"brand", "store", "official_account"})
_COMMON = ("event_id", "customer_id", "tenant", "event_time")
# The fields `to_fact` reads, per schema: the engine's reader decodes nothing else.
FIELDS: dict[str, tuple[str, ...]] = {
    "crm.events.Browse": _COMMON,
    "crm.events.Cart": (*_COMMON, "action"),
    "crm.events.Follow": (*_COMMON, "target_type", "action"),
    "crm.events.Order": (*_COMMON, "order_id", "status", "amount", "referrer_customer_id"),
    "crm.stage.ReferralCredit": _COMMON,
}


to_millis = epoch_ms  # the contract's one epoch-ms helper


def _order_key(order_id: str) -> int:
    return zlib.crc32(order_id.encode())


def to_fact(schema: str, record: dict[str, Any], origin: str = "") -> tuple[str, str, Fact] | None:
    """The fact an event means for the stage rules; None for events no rule reads (profile).
    ValueError for values the state cannot hold (a time before 1970, a negative amount).
    `origin` says where the record was read ("<topic>|<partition>|<offset>")."""
    time = checked_time(to_millis(record["event_time"]))
    event_id = record["event_id"]
    if schema == "crm.events.Browse":
        fact = Fact(event_id, Kind.BROWSE, time, origin=origin)
    elif schema == "crm.events.Cart":
        fact = Fact(event_id, Kind.CART_ADD if record["action"] == "add" else Kind.CART_REMOVE, time, origin=origin)
    elif schema == "crm.events.Follow":
        if record["action"] == "unfollow":
            kind = Kind.UNFOLLOW
        else:
            kind = Kind.JOIN if record["target_type"] in _JOIN_TARGETS else Kind.FAVOURITE
        fact = Fact(event_id, kind, time, origin=origin)
    elif schema == "crm.events.Order":
        cents = checked_cents(record["amount"])
        fact = Fact(
            event_id,
            _ORDER[record["status"]],
            time,
            _order_key(record["order_id"]),
            cents,
            record.get("referrer_customer_id"),
            origin,
        )
    elif schema == "crm.stage.ReferralCredit":
        fact = Fact(event_id, Kind.REFERRAL_CREDIT, time, origin=origin)
    else:
        return None
    return checked_tenant(record["tenant"]), checked_customer(record["customer_id"]), fact
