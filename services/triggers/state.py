"""What the trigger engine remembers of one customer, and its compact JSON form in Redis.

Every part is bounded: timers (a few per customer: one per open order, cart, repurchase,
birthday and delayed rule), sends within the longest cap window, the last decisions and event
fingerprints, the last closed orders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DECIDED_LIMIT", "SEEN_DAYS", "SEEN_LIMIT", "Timer", "TriggerState", "decode_state", "encode_state"]

DECIDED_LIMIT = 64  # trigger ids remembered against repeated causes (e.g. a transition re-sent)
# inputs (events and transitions) remembered against repeats: those of the last SEEN_DAYS of event
# time, at most SEEN_LIMIT; an input older than that is refused as too late
SEEN_DAYS = 366
SEEN_LIMIT = 512
CLOSED_LIMIT = 16  # paid or cancelled orders remembered against their `created` arriving late
PAID_LIMIT = 64  # paid orders remembered against a second `paid` event of the same order


@dataclass(slots=True)
class Timer:
    rule: str
    entity: str  # order id, "cart", "repurchase", "birthday", or "t:<transition id>"
    due: int  # event time (ms) at which it fires
    cause: str
    at: int  # event time of what set it

    @property
    def key(self) -> str:
        return f"{self.rule}|{self.entity}"


@dataclass(slots=True)
class TriggerState:
    consent: dict[str, bool] = field(default_factory=dict)
    timezone: str | None = None
    birthday: str | None = None  # "MM-DD"
    timers: dict[str, Timer] = field(default_factory=dict)
    sends: dict[str, list[int]] = field(default_factory=dict)  # channel -> delivery times
    decided: list[str] = field(default_factory=list)  # newest first
    seen: list[int] = field(default_factory=list)  # day << 32 | fingerprint of applied inputs, newest first
    closed: dict[str, int] = field(default_factory=dict)  # order id -> time paid or cancelled
    last_order: int = 0  # latest time an order was created (or paid)
    paid_count: int = 0
    paid_orders: list[str] = field(default_factory=list)  # ids of the orders counted paid, newest first
    first_paid: int = 0
    last_paid: int = 0
    clock: int = 0  # the latest instant this customer's inputs and timers were applied up to
    # inputs read but not yet applied: the watermark has not reached them (services.triggers.domain)
    pending: list[Any] = field(default_factory=list)
    # campaign -> its last touches (sent or held out) [deliver_after, window end, responded 0/1],
    # newest first; kept for rules with a fatigue guardrail
    touches: dict[str, list[list[int]]] = field(default_factory=dict)

    def next_due(self) -> int | None:
        """When the customer needs the engine again: its next timer or its earliest pending input."""
        return min([*(t.due for t in self.timers.values()), *(i.time for i in self.pending)], default=None)


def encode_state(state: TriggerState) -> bytes:
    data = {
        "c": state.consent,
        "z": state.timezone,
        "b": state.birthday,
        "t": [[t.rule, t.entity, t.due, t.cause, t.at] for t in state.timers.values()],
        "s": state.sends,
        "d": state.decided,
        "e": state.seen,
        "o": state.closed,
        "l": state.last_order,
        "p": [state.paid_count, state.first_paid, state.last_paid],
        "y": state.paid_orders,
        "k": state.clock,
        "q": [_pack(i) for i in state.pending],
        "f": state.touches,
    }
    return json.dumps({k: v for k, v in data.items() if v}, separators=(",", ":")).encode()


def decode_state(raw: bytes) -> TriggerState:
    data = json.loads(raw)
    timers = [Timer(*t) for t in data.get("t", [])]
    count, first, last = data.get("p", [0, 0, 0])
    return TriggerState(
        consent=data.get("c", {}),
        timezone=data.get("z"),
        birthday=data.get("b"),
        timers={t.key: t for t in timers},
        sends=data.get("s", {}),
        decided=data.get("d", []),
        seen=data.get("e", []),
        closed=data.get("o", {}),
        last_order=data.get("l", 0),
        paid_count=count,
        paid_orders=data.get("y", []),
        first_paid=first,
        last_paid=last,
        clock=data.get("k", 0),
        pending=[_unpack(i) for i in data.get("q", [])],
        touches=data.get("f", {}),
    )


def _pack(item: Any) -> list[Any]:
    """A pending input as a JSON list: its class name first, then its fields."""
    return [type(item).__name__, *(getattr(item, name) for name in item.__slots__)]


def _unpack(packed: list[Any]) -> Any:
    from services.triggers import domain  # the input types live with the rules that read them

    return getattr(domain, packed[0])(*packed[1:])
