"""`make bench` (its attribution line; alone: `python -m bench.attribution`): attribution's speed.

Produces what attribution reads for generated customers (touches on the trigger topics, sent or
held out, paid orders and some refunds, browse, cart and follow events), then reads it twice on
the bench stack: a raw aiokafka consumer of the same topics (the ceiling), and the attribution
engine fed by that consumer, its records produced for real. Writes `bench/results/attribution.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.run import DAY, SETTINGS, consume, fresh_stack, produced_and_ceiling, save
from services.attribution.app import SOURCE_TOPICS
from services.attribution.config import AttributionConfig
from services.attribution.engine import AttributionEngine
from services.attribution.metrics import AttributionMetrics
from services.attribution.settings import AttributionSettings
from services.common.avro import default_codec
from services.common.constants import TOPIC_TRIGGERS_COUPONS, TOPIC_TRIGGERS_OUTREACH, TOPIC_TRIGGERS_SUPPRESSED
from services.common.constants import event_topic as topic_of
from services.common.messages import Message
from services.common.outbox import kafka_sent_since
from services.common.produce import engine_producer
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT

HOUR = 3_600_000
ACTIVITY: dict[str, tuple[dict[str, Any], str]] = {
    "browse": ({"page_type": "product", "product_id": "p1"}, "crm.events.Browse"),
    "cart": ({"action": "add", "product_id": "p1"}, "crm.events.Cart"),
    "follow": ({"action": "follow", "target_type": "product", "target_id": "p1"}, "crm.events.Follow"),
}
CAMPAIGNS = [("welcome", "welcome", TOPIC_TRIGGERS_OUTREACH), ("first-purchase-gift", "first_purchase_gift",
             TOPIC_TRIGGERS_COUPONS), ("winback-declining", "winback_declining", TOPIC_TRIGGERS_OUTREACH)]  # fmt: skip


def _customer(rng: random.Random, cid: str, t: int) -> list[tuple[int, str, str, dict[str, Any]]]:
    out: list[tuple[int, str, str, dict[str, Any]]] = []
    base = {"customer_id": cid, "tenant": "bench"}
    for n in range(rng.randrange(5, 20)):
        at = t + rng.randrange(30 * DAY)
        kind = rng.choice(["browse", "browse", "browse", "cart", "follow"])
        fields, schema = ACTIVITY[kind]
        out.append((at, topic_of(kind), schema, {**base, "event_id": f"{cid}-b{n}", "event_time": at, **fields}))
    for n in range(rng.randrange(1, 4)):
        campaign, rule, topic = rng.choice(CAMPAIGNS)
        at = t + rng.randrange(30 * DAY)
        held = rng.random() < 0.15
        record = {**base, "trigger_id": f"{cid}-t{n}", "rule": rule, "campaign_id": campaign, "action": "coupon",
                  "channel": "sms", "offer": {"kind": "amount_off", "value": 10.0, "cost": 2.0}, "cause": f"c{n}",
                  "decided_at": at, "deliver_after": at + HOUR, "suppressed": "holdout" if held else None}  # fmt: skip
        out.append((at + HOUR, TOPIC_TRIGGERS_SUPPRESSED if held else topic, "crm.triggers.Trigger", record))
    for n in range(rng.randrange(0, 4)):
        at = t + rng.randrange(30 * DAY)
        order = {**base, "order_id": f"{cid}-o{n}", "amount": round(rng.uniform(5, 300), 2),
                 "coupon_code": "C10" if rng.random() < 0.2 else None}  # fmt: skip
        paid = {**order, "event_id": f"{cid}-p{n}", "event_time": at, "status": "paid"}
        out.append((at, topic_of("order"), "crm.events.Order", paid))
        if rng.random() < 0.05:
            later = at + rng.randrange(10 * DAY)
            refund = {**order, "event_id": f"{cid}-r{n}", "event_time": later, "status": "refunded"}
            out.append((later, topic_of("order"), "crm.events.Order", refund))
    return out


def generate(customers: int, seed: int = 5) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, Avro value) in event-time order."""
    rng = random.Random(seed)
    codec = default_codec()
    start = 1_700_000_000_000
    raw = [item for c in range(customers) for item in _customer(rng, f"a{c}", start + rng.randrange(30 * DAY))]
    raw.sort(key=lambda r: r[0])
    return [(topic, rec["customer_id"].encode(), codec.encode(schema, rec)) for _, topic, schema, rec in raw]


async def run_engine(total: int) -> tuple[float, int]:
    """The attribution engine fed by a plain aiokafka consumer; its records produced for real."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    producer = engine_producer(SETTINGS.kafka_bootstrap)
    await producer.start()
    codec = default_codec()
    settings = AttributionSettings(kafka_bootstrap=SETTINGS.kafka_bootstrap, redis_url=SETTINGS.redis_url,
                                   state_dir=SETTINGS.state_dir, attribution_group="bench-attribution",
                                   attribution_follow_triggers=False)  # fmt: skip
    sent = 0

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        nonlocal sent
        sent += 1
        return await producer.send(topic, value, key=key)

    engine = AttributionEngine(redis=redis, send=send, codec=codec, config=AttributionConfig(), settings=settings,
                               metrics=AttributionMetrics(CollectorRegistry()),
                               sent_since=kafka_sent_since(SETTINGS.kafka_bootstrap, codec))  # fmt: skip
    await engine.start()

    async def handle(msgs: list[Any]) -> None:
        await engine.process([Message(m.topic, m.partition, m.offset, m.value, m.timestamp) for m in msgs])

    try:
        rate = await consume(total, handle, topics=list(SOURCE_TOPICS))
        return rate, sent
    finally:
        await producer.stop()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "attribution.json")
    args = parser.parse_args()
    with fresh_stack():
        messages = generate(args.customers)
        total = len(messages)
        ceiling = produced_and_ceiling(messages, list(SOURCE_TOPICS), f"for {args.customers:,} customers")
        print("attribution engine fed by aiokafka...")
        engine, records = asyncio.run(run_engine(total))
        print(f"  {engine:,.0f} msg/s, {records:,} attribution records")
    result = {
        "inputs": total,
        "customers": args.customers,
        "attribution_records": records,
        "ceiling_raw_consumer_msgs_per_s": round(ceiling),
        "engine_aiokafka_msgs_per_s": round(engine),
        "engine_share_of_ceiling": round(engine / ceiling, 4),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
