"""Stager benchmark on the local stack (`make bench`): 1M generated events with a realistic mix,
read from the same topics by (1) a raw aiokafka consumer doing nothing (the ceiling), (2) a naive
stager (same rules, one Redis round trip per event), (3) the stager's engine driven by a plain
aiokafka consumer and (4) the stager as deployed (the Faust worker). Writes bench/results/latest.json.

The benchmark runs on a stack of its own (ports 49092/46379, state in .run/bench) so it starts empty.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from tqdm import tqdm

from crm.localstack import ClusterStack, LocalStack
from services.common import keys
from services.common.avro import default_codec
from services.common.clock import tenant_clock
from services.common.constants import TOPIC_STAGE_TRANSITIONS, event_topic
from services.common.produce import engine_producer, send_many
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT, CommonSettings
from services.common.topics import ensure_topics
from services.common.units import read_clocks, read_floors
from services.stager.config import StageRules
from services.stager.dedup import fingerprint, is_repeat, remember
from services.stager.engine import CLOCK as STAGER_CLOCK
from services.stager.engine import Engine, Message, transition_id
from services.stager.facts import to_fact
from services.stager.metrics import StagerMetrics
from services.stager.rules import CustomerState, apply_fact, next_due
from services.stager.settings import StagerSettings
from services.stager.statecodec import decode_state, encode_state

TOPICS = [event_topic(t) for t in ("browse", "cart", "order", "follow")]
# CRM_BENCH_CLUSTER=1: the bench's stack is the cluster stack (three brokers from 49092, a Redis
# Cluster of six nodes from 46379; `crm stack up --cluster`)
CLUSTER = os.environ.get("CRM_BENCH_CLUSTER", "").lower() in ("1", "true", "yes")
SETTINGS = CommonSettings(
    kafka_bootstrap="127.0.0.1:49092",
    redis_url="redis://127.0.0.1:46379/0",
    redis_cluster=CLUSTER,
    kafka_replication=3 if CLUSTER else 1,
    state_dir=REPO_ROOT / ".run" / ("bench-cluster" if CLUSTER else "bench"),
)
DAY = 86_400_000


# --- the workload ------------------------------------------------------------------------------
def generate(n_events: int, customers: int, seed: int = 1) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, Avro value) in event-time order: sessions of browsing, some carts and favourites,
    orders created then mostly paid, brand follows, the odd refund; over 60 days."""
    rng = random.Random(seed)
    codec = default_codec()
    start = 1_700_000_000_000
    raw: list[tuple[int, str, dict[str, Any]]] = []
    n = 0
    while n < n_events:
        cid = f"b{rng.randrange(customers)}"
        t = start + rng.randrange(60 * DAY)
        orders = 0
        for _ in range(rng.randrange(2, 12)):
            t += rng.randrange(10_000, 300_000)
            n += 1
            roll = rng.random()
            base = {"event_id": f"bench-{n}", "customer_id": cid, "tenant": "bench", "event_time": t}
            if roll < 0.72:
                raw.append((t, "browse", {**base, "product_id": f"p{rng.randrange(5000)}", "price": 19.9}))
            elif roll < 0.84:
                raw.append((t, "cart", {**base, "action": "add", "product_id": f"p{rng.randrange(5000)}"}))
            elif roll < 0.88:
                raw.append((t, "follow", {**base, "target_type": rng.choice(["product", "brand"]), "target_id": "x"}))
            else:
                orders += 1
                order = f"{cid}-{n}"
                amount = round(rng.uniform(10, 400), 2)
                raw.append((t, "order", {**base, "order_id": order, "status": "created", "amount": amount}))
                if rng.random() < 0.8:
                    n += 1
                    t += rng.randrange(10_000, 600_000)
                    paid = {
                        **base,
                        "event_id": f"bench-{n}",
                        "event_time": t,
                        "order_id": order,
                        "status": "paid",
                        "amount": amount,
                    }
                    raw.append((t, "order", paid))
                    if rng.random() < 0.03:
                        n += 1
                        refund = {**paid, "event_id": f"bench-{n}", "event_time": t + DAY, "status": "refunded"}
                        raw.append((t + DAY, "order", refund))
    raw.sort(key=lambda r: r[0])
    names = {t: f"crm.events.{t.capitalize()}" for t in ("browse", "cart", "order", "follow")}
    return [
        (event_topic(kind), rec["customer_id"].encode(), codec.encode(names[kind], rec))
        for _, kind, rec in raw[:n_events]
    ]


async def produce(messages: list[tuple[str, bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=SETTINGS.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for topic, key, value in tqdm(messages, desc="producing", unit="ev", mininterval=2):
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(messages) / (time.perf_counter() - started)


# --- readers -----------------------------------------------------------------------------------
async def consume(total: int, handle: Any, limit: int | None = None, topics: list[str] | None = None) -> float:
    """Read the event topics (or `topics`) from the beginning with a fresh consumer; `handle(batch)`
    per poll."""
    consumer = AIOKafkaConsumer(
        *(topics or TOPICS),
        bootstrap_servers=SETTINGS.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    want = limit or total
    seen = 0
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        while seen < want:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            msgs = [m for records in batch.values() for m in records]
            if limit:
                msgs = msgs[: want - seen]
            seen += len(msgs)
            if handle is not None and msgs:
                await handle(msgs)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


class Naive:
    """The same rules as usually first written: per event, read the state, apply, write it back
    (pipelined with the next read: one round trip per event), send each transition and wait."""

    def __init__(self, redis: Any, producer: AIOKafkaProducer) -> None:
        self.redis, self.producer, self.rules, self.codec = redis, producer, StageRules(), default_codec()
        self.pending_write: tuple[str, bytes] | None = None

    async def handle(self, msgs: list[Any]) -> None:
        for msg in msgs:
            schema, record = self.codec.decode(msg.value)
            tenant, customer, fact = to_fact(schema, record)  # type: ignore[misc]
            key = f"naive:{{{tenant}:{customer}}}"
            pipe = self.redis.pipeline(transaction=False)
            if self.pending_write:
                pipe.hset(self.pending_write[0], "s", self.pending_write[1])
            pipe.hget(key, "s")
            data = (await pipe.execute())[-1]
            state, seen = decode_state(data) if data else (CustomerState(), [])
            fp = fingerprint(fact.event_id)
            if not is_repeat(seen, fact.time, fp):
                transitions, _ = apply_fact(state, fact, self.rules)
                seen = remember(seen, fact.time, fp, state.clock, 3_600_000, 64)
                next_due(state, self.rules)
                for tr in transitions:
                    value = self.codec.encode(
                        "crm.stage.StageTransition",
                        {
                            "transition_id": transition_id(tenant, customer, tr.model, tr.cause),
                            "tenant": tenant,
                            "customer_id": customer,
                            "model": tr.model,
                            "from_stage": tr.from_stage,
                            "to_stage": tr.to_stage,
                            "at": tr.at,
                            "cause": tr.cause,
                        },
                    )
                    await self.producer.send_and_wait(TOPIC_STAGE_TRANSITIONS, value, key=customer.encode())
            self.pending_write = (key, encode_state(state, seen))


async def run_naive(total: int, limit: int) -> float:
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    producer = AIOKafkaProducer(bootstrap_servers=SETTINGS.kafka_bootstrap, acks=1)
    await producer.start()
    try:
        return await consume(total, Naive(redis, producer).handle, limit)
    finally:
        await producer.stop()
        await redis.aclose()


async def run_engine(total: int) -> float:
    """Our engine, fed by a plain aiokafka consumer (no Faust), transitions produced for real."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    producer = engine_producer(SETTINGS.kafka_bootstrap)
    await producer.start()
    settings = StagerSettings(**_stager_env(), stager_group="bench-engine")

    async def send(topic: str, key: bytes, value: bytes) -> Any:
        return await producer.send(topic, value, key=key)

    async def many(topic: str, items: list[tuple[bytes, bytes]]) -> None:
        await send_many(producer, topic, items)

    engine = Engine(redis=redis, send=send, codec=default_codec(), rules=StageRules(), settings=settings,
                    metrics=StagerMetrics(CollectorRegistry()), send_many=many)  # fmt: skip
    await engine.start()

    async def handle(msgs: list[Any]) -> None:
        await engine.process([Message(m.topic, m.partition, m.offset, m.value) for m in msgs])

    try:
        return await consume(total, handle)
    finally:
        await producer.stop()
        await redis.aclose()


def _stager_env() -> dict[str, Any]:
    return {
        "kafka_bootstrap": SETTINGS.kafka_bootstrap,
        "redis_url": SETTINGS.redis_url,
        "state_dir": SETTINGS.state_dir,
    }


def _start_workers(workers: int, log: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(workers):
        env = {
            **os.environ,
            "CRM_KAFKA_BOOTSTRAP": SETTINGS.kafka_bootstrap,
            "CRM_REDIS_URL": SETTINGS.redis_url,
            "CRM_STATE_DIR": str(SETTINGS.state_dir),
            "CRM_STAGER_GROUP": "bench-worker",
            "CRM_STAGER_WEB_PORT": str(46066 + i),
            "CRM_LOG_LEVEL": "warn",
        }
        with log.open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.stager"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
    return procs


async def _wait_idle_clock(redis: Any) -> None:
    """Until the idle clock has reached the last event and fired what is due (at most 5 minutes)."""
    for _ in range(600):
        latest, watermark = tenant_clock(await read_clocks(redis, STAGER_CLOCK), "bench")
        due = sum([await redis.zcount(keys.timers_key("bench", p), "-inf", watermark) for p in range(12)])
        if latest and latest == watermark and due == 0:
            return
        await asyncio.sleep(0.5)


async def run_worker(total: int, log: Path, workers: int = 1) -> float:
    """The deployed stager: worker processes (Faust app; the event topics on its direct aiokafka
    path) in one group; rate measured from the first applied batch, so start-up and group join
    are left out."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    procs = _start_workers(workers, log)
    if workers > 1:
        await asyncio.sleep(15)  # let every worker join the group before the first batch counts
    try:
        first: tuple[float, int] | None = None
        with tqdm(total=total, desc="stager worker", unit="ev", mininterval=2) as bar:
            while True:
                applied = sum((await read_floors(redis, "bench-worker")).values())
                bar.update(applied - bar.n)
                if applied and first is None:
                    first = (time.perf_counter(), applied)
                if applied >= total:
                    break
                if any(proc.poll() is not None for proc in procs):
                    raise RuntimeError(f"stager worker exited; see {log}")
                await asyncio.sleep(0.1)
        assert first is not None
        rate = (total - first[1]) / (time.perf_counter() - first[0])
        print(f"  measured over the last {total - first[1]:,} events")
        await _wait_idle_clock(redis)
        return rate
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        await redis.aclose()


async def redis_bytes(customers_prefix: str) -> dict[str, float]:
    """Average MEMORY USAGE of customer state keys (a sample) and Redis memory by key family."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    try:
        sample = []
        async for key in redis.scan_iter(match=customers_prefix, count=1000):
            sample.append(key)
            if len(sample) >= 2000:
                break
        usage = [await redis.memory_usage(k, samples=0) or 0 for k in sample]
        customers = await _count(redis, customers_prefix)
        per_family = {}
        for family in ("crm:timers:{bench:*", "crm:log:{bench:*"):
            total = 0
            async for key in redis.scan_iter(match=family):
                total += await redis.memory_usage(key, samples=0) or 0
            per_family[family.split(":")[1]] = total / max(customers, 1)
        return {
            "customers": customers,
            "state_bytes_per_customer": sum(usage) / max(len(usage), 1),
            "timer_bytes_per_customer": per_family["timers"],
            "transition_log_bytes_per_customer": per_family["log"],
        }
    finally:
        await redis.aclose()


async def _flush() -> None:
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def _count(redis: Any, pattern: str) -> int:
    n = 0
    async for _ in redis.scan_iter(match=pattern, count=5000):
        n += 1
    return n


# --- main --------------------------------------------------------------------------------------
@contextmanager
def fresh_stack() -> Iterator[None]:
    """The bench's own Kafka + Redis, started empty with every topic, stopped at the end."""
    stack = (ClusterStack if CLUSTER else LocalStack)(SETTINGS)
    stack.down()
    shutil.rmtree(SETTINGS.state_dir, ignore_errors=True)
    stack.up(240)
    try:
        asyncio.run(ensure_topics(SETTINGS.kafka_bootstrap, replication=SETTINGS.kafka_replication))
        yield
    finally:
        stack.down()


def produced_and_ceiling(messages: list[tuple[str, bytes, bytes]], topics: list[str], what: str) -> float:
    """Produce `messages` on the bench stack and read them back with a raw aiokafka consumer of
    `topics`: the ceiling an engine reading them is measured against (msg/s)."""
    print(f"{len(messages):,} inputs {what}")
    asyncio.run(produce(messages))
    print("ceiling: raw aiokafka consumer...")
    ceiling = asyncio.run(consume(len(messages), None, topics=topics))
    print(f"  {ceiling:,.0f} msg/s")
    return ceiling


def save(result: dict[str, Any], out: Path) -> None:
    """`result` with the machine and date, as JSON in `out` and on stdout."""
    result = {
        **result,
        "machine": f"{os.cpu_count()} cores, Kafka + Redis + client on the same machine",
        "date": time.strftime("%Y-%m-%d"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--naive-events", type=int, default=50_000, help="naive is slow: measured on a prefix")
    parser.add_argument("--workers", type=int, default=1, help="stager worker processes for the deployed run")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()

    with fresh_stack():
        print(f"generating {args.events} events for up to {args.customers} customers...")
        messages = generate(args.events, args.customers)
        produce_rate = asyncio.run(produce(messages))
        total = len(messages)
        print("ceiling: raw aiokafka consumer...")
        ceiling = asyncio.run(consume(total, None))
        print(f"  {ceiling:,.0f} ev/s")
        print(f"naive stager on the first {args.naive_events} events...")
        naive = asyncio.run(run_naive(total, args.naive_events))
        print(f"  {naive:,.0f} ev/s")
        print("engine fed by aiokafka...")
        engine = asyncio.run(run_engine(total))
        print(f"  {engine:,.0f} ev/s")
        asyncio.run(_flush())  # the worker starts from empty state, as the engine did
        print(f"stager worker x{args.workers} (Faust app, direct event path)...")
        worker = asyncio.run(run_worker(total, SETTINGS.state_dir / "worker.log", args.workers))
        print(f"  {worker:,.0f} ev/s")
        # measured on the deployed worker's state, once its idle clock fired the due timers
        memory = asyncio.run(redis_bytes("crm:c:{bench:*"))
    result = {
        "events": total,
        "customers": memory["customers"],
        "produce_events_per_s": round(produce_rate),
        "ceiling_raw_consumer_events_per_s": round(ceiling),
        "naive_stager_events_per_s": round(naive),
        "engine_aiokafka_events_per_s": round(engine),
        "stager_workers": args.workers,
        "stager_worker_events_per_s": round(worker),
        "worker_share_of_ceiling": round(worker / ceiling, 4),
        "engine_share_of_ceiling": round(engine / ceiling, 4),
        "worker_vs_naive": round(worker / naive, 1),
        "engine_vs_naive": round(engine / naive, 1),
        **{k: round(v, 1) for k, v in memory.items() if k != "customers"},
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
