"""`make bench` (its analytics line; alone: `python -m bench.analytics`): the history worker's speed.

Produces what the analytics history worker reads for generated customers (stage transitions of
every model over 60 days, profile updates, brand follows), then reads it twice on the bench
stack: a raw aiokafka consumer of the same topics (the ceiling), and the analytics engine fed by
that consumer, closing the days as its watermark passes them. Writes `bench/results/analytics.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from bench.run import DAY, SETTINGS, fresh_stack, produced_and_ceiling, save
from services.analytics.app import SOURCE_TOPICS
from services.analytics.engine import AnalyticsEngine
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.settings import AnalyticsSettings
from services.common.avro import default_codec
from services.common.constants import MODEL_STAGES, TOPIC_STAGE_TRANSITIONS
from services.common.constants import event_topic as topic_of
from services.common.messages import Message
from services.common.outbox import kafka_sent_since
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT

START = 1_700_000_000_000
CITIES = ("Shanghai", "Beijing", "Hangzhou", "Shenzhen", "Chengdu")


def _customer(rng: random.Random, cid: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    out: list[tuple[int, str, str, dict[str, Any]]] = []
    base = {"customer_id": cid, "tenant": "bench"}
    t = START + rng.randrange(60 * DAY)
    out.append((t, topic_of("profile"), "crm.events.Profile",
                {**base, "event_id": f"{cid}-p", "event_time": t, "city": rng.choice(CITIES),
                 "gender": rng.choice("fm"), "age_band": rng.choice(["18-24", "25-34", "35-44"])}))  # fmt: skip
    if rng.random() < 0.4:
        at = t + rng.randrange(DAY)
        out.append((at, topic_of("follow"), "crm.events.Follow",
                    {**base, "event_id": f"{cid}-f", "event_time": at, "target_type": "brand", "target_id": "b",
                     "action": "follow"}))  # fmt: skip
    seq = 0
    for model, stages in MODEL_STAGES.items():
        at, was = t, None
        for _ in range(rng.randrange(1, 5)):
            at += rng.randrange(10 * DAY)
            to = rng.choice(stages)
            seq += 1
            out.append((at, TOPIC_STAGE_TRANSITIONS, "crm.stage.StageTransition",
                        {**base, "transition_id": f"{cid}-{seq}", "model": model, "from_stage": was, "to_stage": to,
                         "at": at, "cause": f"e{seq}", "seq": seq}))  # fmt: skip
            was = to
    return out


def generate(customers: int, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, Avro value) in event-time order."""
    rng = random.Random(seed)
    codec = default_codec()
    raw = [item for c in range(customers) for item in _customer(rng, f"h{c}")]
    raw.sort(key=lambda r: r[0])
    return [(topic, rec["customer_id"].encode(), codec.encode(schema, rec)) for _, topic, schema, rec in raw]


async def run_engine(total: int) -> float:
    """The analytics engine fed by a plain aiokafka consumer, ticking (closing days) between batches."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    codec = default_codec()
    settings = AnalyticsSettings(kafka_bootstrap=SETTINGS.kafka_bootstrap, redis_url=SETTINGS.redis_url,
                                 state_dir=SETTINGS.state_dir, analytics_group="bench-analytics",
                                 analytics_follow_stager=False)  # fmt: skip

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        raise AssertionError("the bench's inputs are all valid: nothing is dead-lettered")

    engine = AnalyticsEngine(redis=redis, send=send, codec=codec, settings=settings,
                             metrics=AnalyticsMetrics(CollectorRegistry()),
                             sent_since=kafka_sent_since(SETTINGS.kafka_bootstrap, codec))  # fmt: skip
    await engine.start()

    consumer = AIOKafkaConsumer(*SOURCE_TOPICS, bootstrap_servers=SETTINGS.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)  # fmt: skip
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        # everything was produced before: a partition read short of its end holds its shard's
        # watermark (as the batch loop tells the engine in a worker)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        read_to: dict[Any, int] = {}
        seen = 0
        started = time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            msgs = [m for records in batch.values() for m in records]
            for tp, records in batch.items():
                read_to[tp] = records[-1].offset + 1
            behind = {(tp.topic, tp.partition) for tp, end in ends.items() if read_to.get(tp, 0) < end}
            seen += len(msgs)
            await engine.process([Message(m.topic, m.partition, m.offset, m.value, m.timestamp) for m in msgs], behind)
            await engine.tick()
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "analytics.json")
    args = parser.parse_args()
    with fresh_stack():
        messages = generate(args.customers)
        total = len(messages)
        ceiling = produced_and_ceiling(messages, list(SOURCE_TOPICS), f"for {args.customers:,} customers")
        print("analytics engine fed by aiokafka...")
        engine = asyncio.run(run_engine(total))
        print(f"  {engine:,.0f} msg/s")
    result = {
        "inputs": total,
        "customers": args.customers,
        "ceiling_raw_consumer_msgs_per_s": round(ceiling),
        "engine_aiokafka_msgs_per_s": round(engine),
        "engine_share_of_ceiling": round(engine / ceiling, 4),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
