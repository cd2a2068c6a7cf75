"""A deterministic demo event stream: shoppers browsing, carting, ordering, following.

A few malformed items are mixed in so the dead-letter path is visible too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

__all__ = ["demo_stream"]


class _Shopper:
    def __init__(self, cid: str, tenant: str, start_ms: int, rng: random.Random) -> None:
        self.cid, self.tenant, self.t, self.rng, self.n = cid, tenant, start_ms, rng, 0
        self.run = start_ms // 1000  # each demo run sends new events (ids differ), for the same customers

    def event(self, kind: str, **fields: Any) -> bytes:
        self.n += 1
        self.t += self.rng.randrange(5_000, 240_000)
        body = {
            "type": kind,
            "event_id": f"{self.cid}-{self.run}-{self.n}",
            "customer_id": self.cid,
            "tenant": self.tenant,
            "event_time": self.t,
            **fields,
        }
        return json.dumps(body).encode()


def demo_stream(customers: int, start_ms: int, tenant: str = "demo", seed: int = 7) -> Iterator[bytes]:
    """NDJSON lines of a plausible shopping stream for `customers` customers from `start_ms`."""
    rng = random.Random(seed)
    for c in range(customers):
        shopper = _Shopper(f"demo-c{c:05d}", tenant, start_ms + rng.randrange(0, 3_600_000), rng)
        event = shopper.event
        if rng.random() < 0.3:
            yield event(
                "profile",
                city=rng.choice(["Hangzhou", "Shanghai", "Beijing"]),
                timezone="Asia/Shanghai",
                consent={"sms": rng.random() < 0.8, "email": True},
            )
        session = f"s-{shopper.cid}"
        for _ in range(rng.randrange(1, 6)):
            yield event(
                "browse",
                session_id=session,
                product_id=f"p{rng.randrange(200)}",
                category_id=f"cat{rng.randrange(20)}",
                price=round(rng.uniform(5, 300), 2),
            )
        if rng.random() < 0.25:
            yield event("follow", target_type="brand", target_id=tenant)
        if rng.random() < 0.5:
            product = f"p{rng.randrange(200)}"
            price = round(rng.uniform(5, 300), 2)
            yield event("cart", action="add", product_id=product, price=price, session_id=session)
            if rng.random() < 0.6:
                order = f"o-{shopper.cid}-1"
                yield event(
                    "order",
                    order_id=order,
                    status="created",
                    amount=price,
                    items=[{"product_id": product, "price": price}],
                    session_id=session,
                )
                if rng.random() < 0.8:
                    yield event("order", order_id=order, status="paid", amount=price, session_id=session)
        if c % 50 == 7:  # malformed input the platform might send
            yield b'{"type": "browse", "event_id": "broken'
            yield event("cart", action="add")  # product_id missing
