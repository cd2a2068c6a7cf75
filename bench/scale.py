"""`make bench-scale` (also part of `make bench`): the stager with 1, 2 and 3 workers in one group.

On the bench stack (started empty), `bench.run`'s generated events (`--events`, default 600,000)
are produced once; then, for each worker count, the customer state is emptied and that many
stager worker processes (as deployed, one consumer group of its own per count) apply every event.
Reported per count: events/s from the first applied batch to the last, and the CPU seconds each
process took meanwhile (the workers, the broker, Redis), which says what bounds the rate when it
does not grow with the workers: the machine's cores, Kafka, Redis or the workers themselves.
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import RedisCluster

from bench.run import SETTINGS, fresh_stack, generate, produce, save
from services.common.faustapp import consumer_group
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT
from services.common.units import read_floors

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _pids(name: str) -> list[int]:
    """The pids of the stack's `name` processes (kafka, redis; on the cluster stack every node)."""
    return [int(p.read_text()) for p in sorted((SETTINGS.state_dir / "pids").glob(f"{name}*.pid"))]


async def _used_memory(redis: Any) -> int:
    """Redis `used_memory` (on the cluster stack, summed over the masters)."""
    if SETTINGS.redis_cluster:
        found = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return sum(int(v["used_memory"]) for v in found.values())
    return int((await redis.info("memory"))["used_memory"])


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def _flush_state() -> None:
    """Every key but the stack's own (the next run starts from empty state, as the first did)."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


async def _members(group: str) -> int:
    """Members of consumer group `group` once it is stable with partitions assigned (0 before)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=SETTINGS.kafka_bootstrap)
    await admin.start()
    try:
        found = (await admin.describe_consumer_groups([group]))[0].to_object()["groups"][0]
        return len(found["members"]) if found["state"] == "Stable" else 0
    finally:
        await admin.close()


async def run(workers: int, total: int, customers: int, log: Path) -> dict[str, Any]:
    group = f"bench-scale-{workers}"
    env = {**os.environ, "CRM_KAFKA_BOOTSTRAP": SETTINGS.kafka_bootstrap, "CRM_REDIS_URL": SETTINGS.redis_url,
           "CRM_STATE_DIR": str(SETTINGS.state_dir), "CRM_STAGER_GROUP": group, "CRM_LOG_LEVEL": "warn",
           "CRM_REDIS_CLUSTER": str(SETTINGS.redis_cluster).lower(),
           "CRM_KAFKA_REPLICATION": str(SETTINGS.kafka_replication)}  # fmt: skip
    procs = []
    for i in range(workers):  # (web ports below Linux's ephemeral range, which a client may hold)
        with log.open("ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "services.stager"],
                                          env={**env, "CRM_STAGER_WEB_PORT": str(27166 + i)}, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))  # fmt: skip
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    others = {"kafka": _pids("kafka"), "redis": _pids("redis")}
    empty = await _used_memory(redis)
    try:
        first: tuple[float, int, dict[str, float]] | None = None
        while True:
            applied = sum((await read_floors(redis, group)).values())
            # measured from when every worker has its partitions: what one applied alone before is left out
            if applied and first is None and await _members(consumer_group(group)) == workers:
                cpu = {f"worker{i + 1}": cpu_seconds(p.pid) for i, p in enumerate(procs)}
                first = (time.perf_counter(), applied, {**cpu, **{k: _cpu(v) for k, v in others.items()}})
            if applied >= total:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a stager worker exited; see {log}")
            await asyncio.sleep(0.1)
        assert first is not None
        spent = time.perf_counter() - first[0]
        cpu = {f"worker{i + 1}": cpu_seconds(p.pid) for i, p in enumerate(procs)}
        cpu.update({k: _cpu(v) for k, v in others.items()})
        return {
            "workers": workers,
            "events_per_s": round((total - first[1]) / spent),
            "seconds": round(spent, 1),
            "cpu_seconds": {k: round(v - first[2][k], 1) for k, v in cpu.items()},
            "cores_busy": round(sum(v - first[2][k] for k, v in cpu.items()) / spent, 2),
            # state, timers, counts and transition log of the generated customers (all were seen)
            "redis_bytes_per_customer": round((await _used_memory(redis) - empty) / customers),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--customers", type=int, default=60_000)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    log = SETTINGS.state_dir / "scale.log"
    results = []
    with fresh_stack():
        messages = generate(args.events, args.customers)
        asyncio.run(produce(messages))
        for n in (int(w) for w in args.workers.split(",")):
            asyncio.run(_flush_state())
            print(f"{n} stager worker(s)...")
            found = asyncio.run(run(n, len(messages), args.customers, log))
            print(f"  {found}")
            results.append(found)
    one = results[0]["events_per_s"]
    name = "scale-cluster.json" if SETTINGS.redis_cluster else "scale.json"
    save({"events": args.events, "cores": os.cpu_count(), "cluster": SETTINGS.redis_cluster, "runs": results,
          "speedup": {r["workers"]: round(r["events_per_s"] / one, 2) for r in results}},
         Path(REPO_ROOT) / "bench" / "results" / name)  # fmt: skip


if __name__ == "__main__":
    main()
