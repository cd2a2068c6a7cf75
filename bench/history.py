"""`make bench-history` (also part of `make bench`): the stage history index at scale.

One model of six stages for `--customers` customers (default 1,000,000) over `--days` days
(default 365): each customer arrives on a random day and moves between stages about `--moves`
times a year, at random instants. The days are added and closed in order, as the engine's
watermark closes them. Then, at random instants: a count at an instant, a full flow matrix
between two instants, and an audience count (an expression of three stage memberships at two
instants); median and worst time of each, and the bytes the index takes per customer per year.
First in this process (what a query costs on top of reading the bitmaps), then as the service
runs it: the customers spread over 12 shards, each shard's history written to the bench's own
Redis (`services/analytics/store.py`) and every query answered through `services/analytics/query.py`
(per shard one snapshot and at most 7 days read from Redis, the shards added up), with the
memory Redis uses for it. Then the behaviour index (`services/analytics/behaviour.py`) for the
same customers: `--orders` paid orders per customer a year and views of one category on
`--views` days a year, written as closing the days writes them, and audiences of behaviour terms
(`paid_orders_365d >= 2`, `category:bench browsed 30d`, one with a stage) timed the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.run import SETTINGS, fresh_stack, save
from services.analytics import query
from services.analytics.audience import parse
from services.analytics.behaviour import WEEK, encode_browse, encode_layers, encode_paid, layers_of
from services.analytics.history import DAY_MS, History, Transition
from services.analytics.store import queue_changes
from services.common import keys
from services.common.constants import MODEL_STAGES
from services.common.redisbatch import connect
from services.common.settings import REPO_ROOT

MODEL = "lifecycle"
STAGES = MODEL_STAGES[MODEL]  # prospect, new, developing, mature, declining, churned
SHARDS = 12
START_DAY = 19_723  # 2024-01-01


def generate(customers: int, days: int, moves: float, rnd: random.Random) -> list[list[Transition]]:
    """The transitions of each day, in time order."""
    by_day: list[list[Transition]] = [[] for _ in range(days)]
    for ident in range(customers):
        day = rnd.randrange(days)
        by_day[day].append(((START_DAY + day) * DAY_MS + rnd.randrange(DAY_MS), ident, STAGES[0]))
        for _ in range(round(rnd.expovariate(1 / moves) * (days - day) / 365)):
            when = rnd.randrange(day, days)
            to = rnd.choice(STAGES[1:])
            by_day[when].append(((START_DAY + when) * DAY_MS + rnd.randrange(DAY_MS), ident, to))
    for found in by_day:
        found.sort()
    return by_day


def timed(query: Callable[[], Any], times: int) -> tuple[float, float]:
    """Median and worst milliseconds of `times` runs."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        query()
        spent.append((time.perf_counter() - started) * 1000)
    return statistics.median(spent), max(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--moves", type=float, default=4.0, help="stage changes per customer per year")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--orders", type=float, default=3.0, help="paid orders per customer per year")
    parser.add_argument("--views", type=float, default=4.0, help="days a customer views the category per year")
    parser.add_argument("--no-redis", action="store_true", help="only the in-process part")
    args = parser.parse_args()
    rnd = random.Random(42)
    print(f"generating {args.customers:,} customers over {args.days} days...")
    by_day = generate(args.customers, args.days, args.moves, rnd)
    total = sum(len(d) for d in by_day)
    history = History(STAGES)
    started = time.perf_counter()
    for i, found in enumerate(tqdm(by_day, desc="closing days", unit="day")):
        history.add(found)
        history.close_until(START_DAY + i)
    built = time.perf_counter() - started
    end = (START_DAY + args.days) * DAY_MS

    def instant() -> int:
        return START_DAY * DAY_MS + rnd.randrange(end - START_DAY * DAY_MS)

    def audience() -> int:
        t0, t1 = sorted((instant(), instant()))
        before, after = history.members_at(t0), history.members_at(t1)
        return len((after["mature"] | after["developing"]) - before["churned"])

    def flow() -> dict[tuple[str, str], int]:
        t0, t1 = sorted((instant(), instant()))
        return history.flow(t0, t1)

    count_ms = timed(lambda: history.counts_at(instant()), args.queries)
    flow_ms = timed(flow, args.queries)
    audience_ms = timed(audience, args.queries)
    size = history.nbytes()
    years = args.days / 365
    result = {
        "customers": args.customers,
        "days": args.days,
        "transitions": total,
        "stages": len(STAGES),
        "build_seconds": round(built, 1),
        "count_at_instant_ms_median_worst": [round(v, 2) for v in count_ms],
        "flow_matrix_ms_median_worst": [round(v, 2) for v in flow_ms],
        "audience_count_ms_median_worst": [round(v, 2) for v in audience_ms],
        "index_bytes": size,
        "bytes_per_customer_per_year_per_model": round(size / args.customers / years, 1),
        "snapshot_every_changed_days": history.snapshot_every,
    }
    if not args.no_redis:
        with fresh_stack():
            result["through_redis"] = asyncio.run(through_redis(by_day, args, rnd))
    save(result, Path(REPO_ROOT) / "bench" / "results" / "history.json")


async def through_redis(by_day: list[list[Transition]], args: argparse.Namespace, rnd: random.Random) -> dict[str, Any]:
    """The same history split over the shards in Redis, queried as the API does."""
    redis = connect(SETTINGS.redis_url, SETTINGS.redis_cluster)
    tenant = "bench"
    try:
        before = (await redis.info("memory"))["used_memory"]
        for shard in tqdm(range(SHARDS), desc="writing shards to Redis", unit="shard"):
            history = History(STAGES)
            for i, found in enumerate(by_day):
                history.add([(t, ident // SHARDS, s) for t, ident, s in found if ident % SHARDS == shard])
                history.close_until(START_DAY + i)
            async with redis.pipeline(transaction=False) as pipe:
                queue_changes(pipe, tenant, MODEL, shard, history, 0)
                await pipe.execute()
        used = (await redis.info("memory"))["used_memory"] - before
        end = (START_DAY + args.days) * DAY_MS

        def instant() -> int:
            return START_DAY * DAY_MS + rnd.randrange(end - START_DAY * DAY_MS)

        async def count() -> Any:
            return await query.counts(redis, tenant, MODEL, instant(), partitions=SHARDS)

        async def flow() -> Any:
            t0, t1 = sorted((instant(), instant()))
            return await query.flow(redis, tenant, MODEL, t0, t1, partitions=SHARDS)

        async def audience() -> int:
            tree = parse("(lifecycle:mature | lifecycle:developing) - lifecycle:declining")
            return int(await query.Audiences(redis, tenant, instant(), SHARDS).count(tree))

        out = {
            "shards": SHARDS,
            "count_at_instant_ms_median_worst": [round(v, 2) for v in await atimed(count, args.queries)],
            "flow_matrix_ms_median_worst": [round(v, 2) for v in await atimed(flow, args.queries)],
            "audience_count_ms_median_worst": [round(v, 2) for v in await atimed(audience, args.queries)],
            "redis_bytes": used,
            "redis_bytes_per_customer_per_year_per_model": round(used / args.customers / (args.days / 365), 1),
        }
        out["behaviour"] = await behaviour(redis, tenant, args, rnd)
        return out
    finally:
        await redis.aclose()


async def write_behaviour(redis: Any, tenant: str, args: argparse.Namespace, rnd: random.Random) -> tuple[int, int]:
    """Each shard's days of paid orders and category views, as closing the days writes them;
    (orders, view days) written."""
    orders = views = 0
    per_shard = args.customers // SHARDS
    for shard in tqdm(range(SHARDS), desc="writing behaviour to Redis", unit="shard"):
        paid: list[list[tuple[int, int]]] = [[] for _ in range(args.days)]
        seen: list[dict[int, int]] = [{} for _ in range(args.days)]
        for ident in range(per_shard):
            for _ in range(round(rnd.expovariate(1 / args.orders) * args.days / 365)):
                paid[rnd.randrange(args.days)].append((ident, rnd.randrange(DAY_MS)))
            for _ in range(round(rnd.expovariate(1 / args.views) * args.days / 365)):
                seen[rnd.randrange(args.days)][ident] = rnd.randrange(DAY_MS)
        async with redis.pipeline(transaction=False) as pipe:
            for i, (day_orders, day_views) in enumerate(zip(paid, seen, strict=True)):
                if day_orders:
                    pipe.hset(keys.behaviour_key(tenant, shard, "pd"), str(START_DAY + i), encode_paid(day_orders))
                if day_views:
                    pipe.hset(keys.behaviour_key(tenant, shard, f"bd:{START_DAY + i}"), "bench",
                              encode_browse(day_views))  # fmt: skip
                orders, views = orders + len(day_orders), views + len(day_views)
            # each whole week's layers, as closing its last day writes them
            for week in range(START_DAY // WEEK, (START_DAY + args.days) // WEEK):
                counts = Counter(i for d in range(week * WEEK, (week + 1) * WEEK) if 0 <= d - START_DAY < args.days
                                 for i, _ in paid[d - START_DAY])  # fmt: skip
                pipe.hset(keys.behaviour_key(tenant, shard, "pw"), str(week), encode_layers(layers_of(counts)))
            pipe.hset(keys.behaviour_key(tenant, shard, "meta"), mapping={"closed": START_DAY + args.days - 1,
                                                                          "since": START_DAY})  # fmt: skip
            await pipe.execute()
    return orders, views


async def behaviour(redis: Any, tenant: str, args: argparse.Namespace, rnd: random.Random) -> dict[str, Any]:
    """The behaviour index of the same customers and audiences of behaviour terms at instants in
    the year's last quarter (windows of up to 365 days)."""
    before = (await redis.info("memory"))["used_memory"]
    orders, views = await write_behaviour(redis, tenant, args, rnd)
    used = (await redis.info("memory"))["used_memory"] - before
    late = (START_DAY + args.days * 3 // 4) * DAY_MS
    timings = {}
    for text in ("paid_orders_365d >= 2", "paid_orders_30d >= 1", "category:bench browsed 30d",
                 "lifecycle:mature & paid_orders_90d >= 1 - category:bench browsed 30d"):  # fmt: skip
        tree = parse(text)

        async def run(tree: Any = tree) -> int:
            at = late + rnd.randrange((START_DAY + args.days) * DAY_MS - late)
            return await query.Audiences(redis, tenant, at, SHARDS).count(tree)

        timings[text] = [round(v, 2) for v in await atimed(run, args.queries)]
    return {
        "paid_orders": orders,
        "category_view_days": views,
        "redis_bytes": used,
        "redis_bytes_per_customer_per_year": round(used / args.customers / (args.days / 365), 1),
        "audience_ms_median_worst": timings,
    }


async def atimed(query_once: Callable[[], Awaitable[Any]], times: int) -> tuple[float, float]:
    """Median and worst milliseconds of `times` runs, after one untimed (the client's connections
    to Redis opened, as in a service that has been answering)."""
    await query_once()
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        await query_once()
        spent.append((time.perf_counter() - started) * 1000)
    return statistics.median(spent), max(spent)


if __name__ == "__main__":
    main()
