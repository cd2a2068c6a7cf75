"""One customer's attribution state in Redis (field `s` of its hash), as compact JSON.

Every part is bounded by time (`services.attribution.model.prune` forgets trials `keep_days`
after their window, and the orders and activity older than every trial kept) and activity by
count as well. The tallies (one per campaign and group the customer had a trial of) stay.
"""

from __future__ import annotations

import json
from typing import Any

from services.attribution.model import AttributionState, Order, Result, Touch

__all__ = ["decode_state", "encode_state"]


def encode_state(state: AttributionState) -> bytes:
    data: dict[str, Any] = {
        "t": [
            [t.trigger_id, t.campaign, t.rule, t.group, t.time, t.window_ms, t.channel_cents, t.offer_cents]
            for t in state.touches.values()
        ],
        "o": {oid: [o.paid, o.amount_cents, int(o.coupon), o.refunded] for oid, o in state.orders.items()},
        "a": state.activity,
        "r": {
            tid: [int(r.final), int(r.converted), r.orders, r.revenue_cents, r.cost_cents, int(r.interacting)]
            for tid, r in state.results.items()
        },  # fmt: skip
        "c": state.credited,
        "x": sorted(state.retracted),
        "w": state.as_of,
        "y": state.tallies,
    }
    return json.dumps({k: v for k, v in data.items() if v}, separators=(",", ":")).encode()


def decode_state(raw: bytes) -> AttributionState:
    data = json.loads(raw)
    touches = [Touch(*t) for t in data.get("t", [])]
    return AttributionState(
        touches={t.trigger_id: t for t in touches},
        orders={
            oid: Order(paid, cents, bool(coupon), refunded)
            for oid, (paid, cents, coupon, refunded) in data.get("o", {}).items()
        },  # fmt: skip
        activity=data.get("a", []),
        results={
            tid: Result(bool(f), bool(c), n, rev, cost, bool(i))
            for tid, (f, c, n, rev, cost, i) in data.get("r", {}).items()
        },  # fmt: skip
        credited=data.get("c", {}),
        retracted=set(data.get("x", [])),
        as_of=data.get("w", 0),
        tallies=data.get("y", {}),
    )
