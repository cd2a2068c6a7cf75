"""`make bench-triggers`: the triggers service's speed on a generated stream.

Produces a stream of stage transitions, orders, cart adds and profiles (what the triggers read)
for generated customers, then reads it three ways on the bench stack: a raw aiokafka consumer
(the ceiling), the trigger engine fed by that consumer with its decisions produced for real, and
the triggers worker as deployed (Faust agent). Writes `bench/results/triggers.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from tqdm import tqdm

from bench.run import DAY, SETTINGS, consume, fresh_stack, produce, save
from services.common.avro import default_codec
from services.common.constants import TOPIC_STAGE_TRANSITIONS, event_topic
from services.common.messages import Message
from services.common.outbox import kafka_sent_since
from services.common.produce import engine_producer
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT
from services.common.units import read_floors
from services.triggers.app import SOURCE_TOPICS
from services.triggers.config import TriggerConfig
from services.triggers.engine import OUTPUT_TOPICS, TriggerEngine
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings

MIN = 60_000


def _customer(rng: random.Random, cid: str, t: int) -> list[tuple[int, str, str, dict[str, Any]]]:
    out: list[tuple[int, str, str, dict[str, Any]]] = []
    base = {"customer_id": cid, "tenant": "bench"}

    def transition(at: int, model: str, frm: str | None, to: str, n: int) -> None:
        record = {**base, "transition_id": f"{cid}-{n}", "model": model, "from_stage": frm, "to_stage": to,
                  "at": at, "cause": f"{cid}-e{n}"}  # fmt: skip
        out.append((at, TOPIC_STAGE_TRANSITIONS, "crm.stage.StageTransition", record))

    def event(at: int, kind: str, schema: str, n: int, **fields: Any) -> None:
        out.append((at, event_topic(kind), schema, {**base, "event_id": f"{cid}-e{n}", "event_time": at, **fields}))

    if rng.random() < 0.33:
        consent = {"sms": rng.random() < 0.8, "push": rng.random() < 0.9}
        birthday = f"19{rng.randrange(60, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}"
        event(t - MIN, "profile", "crm.events.Profile", 0, consent=consent, timezone="Asia/Shanghai", birthday=birthday)
    transition(t, "lifecycle", None, "new", 1)
    transition(t + MIN, "pyramid", "aware", "considering", 2)
    event(t + 2 * MIN, "cart", "crm.events.Cart", 3, action="add", product_id="p1")
    if rng.random() < 0.6:
        event(t + 20 * MIN, "order", "crm.events.Order", 4, order_id=f"{cid}-o", status="created", amount=50.0)
        if rng.random() < 0.8:
            paid = t + 25 * MIN
            event(paid, "order", "crm.events.Order", 5, order_id=f"{cid}-o", status="paid", amount=50.0)
            transition(paid, "pyramid", "considering", "first_purchase", 6)
            if rng.random() < 0.3:
                transition(paid + 90 * DAY, "lifecycle", "new", "declining", 7)
    return out


def generate(customers: int, seed: int = 3) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, Avro value) in event-time order: each customer joins, shows interest, carts,
    orders (mostly paid), and some decline three months later; a third send a profile first."""
    rng = random.Random(seed)
    codec = default_codec()
    start = 1_700_000_000_000
    raw = [item for c in range(customers) for item in _customer(rng, f"t{c}", start + rng.randrange(30 * DAY))]
    raw.sort(key=lambda r: r[0])
    return [(topic, rec["customer_id"].encode(), codec.encode(schema, rec)) for _, topic, schema, rec in raw]


async def run_engine(total: int) -> tuple[float, int]:
    """The trigger engine fed by a plain aiokafka consumer; its decisions produced for real."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    producer = engine_producer(SETTINGS.kafka_bootstrap)
    await producer.start()
    codec = default_codec()
    settings = TriggerSettings(kafka_bootstrap=SETTINGS.kafka_bootstrap, redis_url=SETTINGS.redis_url,
                               state_dir=SETTINGS.state_dir, triggers_group="bench-triggers-engine",
                               triggers_follow_stager=False)  # fmt: skip
    sent = 0

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        nonlocal sent
        sent += 1
        return await producer.send(topic, value, key=key)

    engine = TriggerEngine(redis=redis, send=send, codec=codec, config=TriggerConfig(), settings=settings,
                           metrics=TriggerMetrics(CollectorRegistry()),
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


async def run_worker(total: int, log: Path) -> float:
    """The deployed triggers worker (Faust agent with take_events); rate from its first batch."""
    env = {**os.environ, "CRM_KAFKA_BOOTSTRAP": SETTINGS.kafka_bootstrap, "CRM_REDIS_URL": SETTINGS.redis_url,
           "CRM_STATE_DIR": str(SETTINGS.state_dir), "CRM_TRIGGERS_GROUP": "bench-triggers",
           "CRM_TRIGGERS_WEB_PORT": "46067", "CRM_LOG_LEVEL": "warn",
           # no stager runs here: the progress records it writes would never come
           "CRM_TRIGGERS_FOLLOW_STAGER": "false"}  # fmt: skip
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.triggers"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        first: tuple[float, int] | None = None
        with tqdm(total=total, desc="triggers worker", unit="msg", mininterval=2) as bar:
            while True:
                applied = sum((await read_floors(redis, "bench-triggers")).values())
                bar.update(applied - bar.n)
                if applied and first is None:
                    first = (time.perf_counter(), applied)
                if applied >= total:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"triggers worker exited; see {log}")
                await asyncio.sleep(0.1)
        assert first is not None
        return (total - first[1]) / (time.perf_counter() - first[0])
    finally:
        proc.terminate()
        proc.wait(30)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "triggers.json")
    args = parser.parse_args()
    with fresh_stack():
        messages = generate(args.customers)
        total = len(messages)
        print(f"{total:,} inputs for {args.customers:,} customers")
        asyncio.run(produce(messages))
        print("ceiling: raw aiokafka consumer...")
        ceiling = asyncio.run(consume(total, None, topics=list(SOURCE_TOPICS)))
        print(f"  {ceiling:,.0f} msg/s")
        print("trigger engine fed by aiokafka...")
        engine, decisions = asyncio.run(run_engine(total))
        print(f"  {engine:,.0f} msg/s, {decisions:,} decisions")
        print("triggers worker (Faust agent)...")
        worker = asyncio.run(run_worker(total, SETTINGS.state_dir / "triggers.log"))
        print(f"  {worker:,.0f} msg/s")
    result = {
        "inputs": total,
        "customers": args.customers,
        "decisions": decisions,
        "outputs": sorted(OUTPUT_TOPICS.values()),
        "ceiling_raw_consumer_msgs_per_s": round(ceiling),
        "engine_aiokafka_msgs_per_s": round(engine),
        "worker_msgs_per_s": round(worker),
        "worker_share_of_ceiling": round(worker / ceiling, 4),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
