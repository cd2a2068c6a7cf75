"""`make bench-latency` (also part of `make bench`): end-to-end latency under a steady load.

On the bench stack (started empty), the ingest HTTP service, one stager worker and one triggers
worker run as deployed. An open-loop producer posts live events (event time = now) to
`POST /v1/events` at 1,000, 5,000 and 10,000 events/s, a minute each (`--rates`, `--seconds`):
every 20 ms a request with that slot's events, sent whether or not the earlier ones were
answered. The mix is that of a shop: page views, cart adds, favourites, brand follows, orders
created then paid, over `--customers` customers.

For each rate, from the topics themselves: event -> transition, the time from an event's
acceptance (its record's timestamp, set by ingest's producer, carried by the transition as
`accepted_at`) to the transition's append to `crm.stage.transitions` (that record's timestamp);
event -> trigger, from the same acceptance to the append of the decision the transition caused
at once (rules without a delay); p50, p99 and max of each; and the consumer lag of both groups
when the minute ends. The latency cannot fall below the allowed lateness
(`CRM_ALLOWED_LATENESS_SECONDS`, `--lateness`): an event is applied once its shard's watermark
passes it, so that replays and live runs decide alike. Writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.run import SETTINGS, fresh_stack, save
from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_STAGE_TRANSITIONS,
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
)
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT
from services.common.tail import topic_partitions
from services.common.units import read_floors
from services.stager.app import SOURCE_TOPICS as STAGER_INPUTS
from services.triggers.app import SOURCE_TOPICS as TRIGGER_INPUTS

INGEST_PORT, KEY, TENANT = 46081, "bench-latency-key", "lat"
GROUPS = {"stager": "bench-lat-stager", "triggers": "bench-lat-triggers"}
DECISIONS = (TOPIC_TRIGGERS_COUPONS, TOPIC_TRIGGERS_REMINDERS, TOPIC_TRIGGERS_OUTREACH, TOPIC_TRIGGERS_SUPPRESSED)
SLOT = 0.02  # seconds between requests


def _events(rng: random.Random, n: int, customers: int, serial: list[int]) -> list[dict[str, Any]]:
    """`n` live events (event time now) of random customers: views, carts, favourites, brand
    follows, orders created and paid."""
    now = int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        serial[0] += 1
        who = f"c{rng.randrange(customers)}"
        base = {"event_id": f"lat-{serial[0]}", "customer_id": who, "tenant": TENANT, "event_time": now}
        roll = rng.random()
        if roll < 0.70:
            out.append({"type": "browse", **base, "product_id": f"p{rng.randrange(3000)}", "category_id": "c1"})
        elif roll < 0.82:
            out.append({"type": "cart", **base, "action": "add", "product_id": f"p{rng.randrange(3000)}"})
        elif roll < 0.86:
            out.append({"type": "follow", **base, "target_type": "product", "target_id": "p1", "action": "follow"})
        elif roll < 0.90:
            out.append({"type": "follow", **base, "target_type": "brand", "target_id": "b", "action": "follow"})
        else:
            order = {"order_id": f"o-{serial[0]}", "amount": 30.0}
            out.append({"type": "order", **base, **order, "status": "created"})
            serial[0] += 1
            out.append({"type": "order", **base, **order, "event_id": f"lat-{serial[0]}", "status": "paid"})
    return out[:n]


async def _load(rate: int, seconds: float, customers: int, rng: random.Random, serial: list[int]) -> tuple[int, int]:
    """Post `rate` events a second for `seconds`, open loop; (events accepted, requests failed)."""
    url = f"http://127.0.0.1:{INGEST_PORT}/v1/events"
    headers = {"X-API-Key": KEY, "Content-Type": "application/x-ndjson"}
    accepted = failed = 0
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def post(body: str) -> None:
            nonlocal accepted, failed
            try:
                async with session.post(url, data=body, headers=headers) as reply:
                    found = await reply.json()
                    accepted += int(found.get("accepted", 0))
                    failed += reply.status >= 300
            except (aiohttp.ClientError, TimeoutError):
                failed += 1

        start = time.perf_counter()
        sent = 0.0
        slot = 0
        while (elapsed := time.perf_counter() - start) < seconds:
            due = rate * (slot + 1) * SLOT - sent
            n = int(due)
            if n:
                body = "".join(json.dumps(e) + "\n" for e in _events(rng, n, customers, serial))
                task = asyncio.create_task(post(body))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += n
            slot += 1
            await asyncio.sleep(max(0.0, (slot * SLOT) - (time.perf_counter() - start)))
        del elapsed
        if pending:
            await asyncio.wait(pending, timeout=60)
    return accepted, failed


async def _ends(topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=SETTINGS.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await topic_partitions(SETTINGS.kafka_bootstrap, t)]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def _read(starts: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> list[Any]:
    """The records between `starts` and `ends`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=SETTINGS.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        wanted = [tp for tp in ends if ends[tp] > starts.get(tp, 0)]
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, starts.get(tp, 0))
        left = {tp: ends[tp] for tp in wanted}
        while left:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                out += records
                if records and records[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
            if not batch:
                break
        return out
    finally:
        await consumer.stop()


async def _lag() -> dict[str, int]:
    """Messages on each group's input topics not yet applied (their fence in Redis)."""
    redis: Any = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    out = {}
    try:
        for name, inputs in (("stager", STAGER_INPUTS), ("triggers", TRIGGER_INPUTS)):
            applied = await read_floors(redis, GROUPS[name])
            ends = await _ends(tuple(inputs))
            out[name] = sum(max(0, end - applied.get(f"{tp.topic}:{tp.partition}", 0)) for tp, end in ends.items())
    finally:
        await redis.aclose()
    return out


def _quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max_ms": round(ordered[-1], 1),
    }


async def _measure(starts: dict[TopicPartition, int]) -> dict[str, Any]:
    """Both latencies from the records appended since `starts`."""
    codec = default_codec()
    topics = (TOPIC_STAGE_TRANSITIONS, *DECISIONS)
    records = await _read(starts, await _ends(topics))
    transitions: dict[str, tuple[int, int]] = {}  # id -> (accepted, at)
    to_transition: list[float] = []
    decisions = []
    for r in records:
        schema, record = codec.decode(r.value)
        if schema == "crm.stage.StageTransition" and record["accepted_at"] is not None:
            accepted = int(record["accepted_at"].timestamp() * 1000)
            transitions[record["transition_id"]] = (accepted, int(record["at"].timestamp() * 1000))
            to_transition.append(r.timestamp - accepted)
        elif schema == "crm.triggers.Trigger":
            decisions.append((r.timestamp, record))
    to_trigger = []
    for appended, record in decisions:
        cause = str(record["cause"])
        found = transitions.get(cause.removeprefix("transition:")) if cause.startswith("transition:") else None
        if found is not None and int(record["decided_at"].timestamp() * 1000) == found[1]:  # decided at once
            to_trigger.append(appended - found[0])
    return {"event_to_transition": _quantiles(to_transition), "event_to_trigger": _quantiles(to_trigger)}


def _start(args: argparse.Namespace, log: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "CRM_KAFKA_BOOTSTRAP": SETTINGS.kafka_bootstrap,
        "CRM_REDIS_URL": SETTINGS.redis_url,
        "CRM_STATE_DIR": str(SETTINGS.state_dir),
        "CRM_LOG_LEVEL": "warn",
        "CRM_ALLOWED_LATENESS_SECONDS": str(args.lateness),
        "CRM_TIMER_INTERVAL_SECONDS": str(args.tick),
        "CRM_BATCH_WITHIN_SECONDS": str(args.batch_within),
        "CRM_API_KEYS": KEY,
        "CRM_INGEST_PORT": str(INGEST_PORT),
        "CRM_STAGER_GROUP": GROUPS["stager"],
        "CRM_STAGER_WEB_PORT": "46066",
        "CRM_TRIGGERS_GROUP": GROUPS["triggers"],
        "CRM_TRIGGERS_WEB_PORT": "46067",
    }
    procs = []
    for module in ("services.ingest", "services.stager", "services.triggers"):
        with log.open("ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))  # fmt: skip
    for port in (INGEST_PORT, 46066, 46067):
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"a service on port {port} did not come up; see {log}")
    return procs


async def run(rates: list[int], seconds: float, customers: int) -> list[dict[str, Any]]:
    rng, serial, out = random.Random(3), [0], []
    # warm up: every worker has joined its group and read a first batch
    await _load(200, 5, customers, rng, serial)
    await asyncio.sleep(10)
    for rate in rates:
        starts = await _ends((TOPIC_STAGE_TRANSITIONS, *DECISIONS))
        print(f"{rate:,} events/s for {seconds:.0f} s...")
        accepted, failed = await _load(rate, seconds, customers, rng, serial)
        lag = await _lag()
        await asyncio.sleep(5)  # what is still in flight reaches the topics
        found = {"rate": rate, "seconds": seconds, "accepted": accepted, "failed_requests": failed,
                 "lag_at_end": lag, **await _measure(starts)}  # fmt: skip
        print(json.dumps(found))
        out.append(found)
        if sum(lag.values()) > rate * 30:  # far behind: let it catch up before the next rate
            for _ in range(120):
                if sum((await _lag()).values()) < rate:
                    break
                await asyncio.sleep(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="1000,5000,10000")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--lateness", type=float, default=0.0, help="CRM_ALLOWED_LATENESS_SECONDS of the workers")
    parser.add_argument("--tick", type=float, default=0.5, help="CRM_TIMER_INTERVAL_SECONDS: timers and progress")
    parser.add_argument("--batch-within", type=float, default=0.2, help="CRM_BATCH_WITHIN_SECONDS")
    args = parser.parse_args()
    log = Path(REPO_ROOT) / ".run" / "bench-latency.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with fresh_stack():
        procs = _start(args, log)
        try:
            results = asyncio.run(run([int(r) for r in args.rates.split(",")], args.seconds, args.customers))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    settings = {"allowed_lateness_seconds": args.lateness, "timer_interval_seconds": args.tick,
                "batch_within_seconds": args.batch_within}  # fmt: skip
    save({"settings": settings, "runs": results},
         Path(REPO_ROOT) / "bench" / "results" / "latency.json")  # fmt: skip


if __name__ == "__main__":
    main()
