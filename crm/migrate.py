"""`crm migrate-keys`: Redis data written by the single-node key layout, rewritten in place into the
unit layout (`services.common.keys`: every key of a tenant's shard under the hash tag
`{tenant:shard}`), so it can then be copied into a Redis Cluster as it is (`redis-cli --cluster
import ... --cluster-copy`).

What moves where: a customer's state to its shard, the one Kafka's partitioner gives its id (the
events are keyed by it); timer sets, outboxes and clocks to their shard's keys; each group's
applied offsets to its shards' floors; a transition log is split by its customers' shards; a
tenant's stage counts and campaign counters go whole to shard 0 (readers sum the shards, so later
changes on any shard add up right). Idempotent: a second run finds nothing of the old layout. The
workers must be stopped while it runs; a worker refuses to start on data of the old layout.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiokafka.partitioner import murmur2

from services.common import keys
from services.common.constants import REDIS_PREFIX
from services.common.fence import FLOOR
from services.common.units import Units

__all__ = ["migrate_keys", "shard_of"]

SEP = "\x1f"
Units_ = set[tuple[str, int]]
_CLOCKS = {"clock:shards": "stager", "trg:clock": "triggers", "attr:clock": "attribution", "an:clock": "analytics"}


def shard_of(customer: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by `customer`."""
    return int(murmur2(customer.encode()) & 0x7FFFFFFF) % partitions


async def migrate_keys(
    redis: Any, groups: dict[str, str], partitions: int, say: Callable[[str], None] = print
) -> Counter[str]:
    """Rewrite every key of the old layout on `redis` (a single Redis server); `groups` names each
    service's group ("stager", "triggers", "attribution", "analytics"). The number of keys moved, by kind."""
    moved: Counter[str] = Counter()
    units: set[tuple[str, int]] = set()
    p = re.escape(REDIS_PREFIX)
    customer = re.compile(rf"{p}([cta]):\{{([^:]*):(.*)\}}$")
    timers = re.compile(rf"{p}(timers|trg:timers|attr:timers|an:timers):([^:]*):(\d+)$")
    outbox = re.compile(rf"{p}(?:outbox:(.+)|(trg|attr|an):outbox):(\d+)$")
    state_key = {"c": keys.customer_key, "t": keys.trigger_state_key, "a": keys.attribution_state_key}
    timer_key = {"timers": keys.timers_key, "trg:timers": keys.trigger_timers_key,
                 "attr:timers": keys.attribution_timers_key, "an:timers": keys.analytics_timers_key}  # fmt: skip
    outbox_group = {"trg": groups["triggers"], "attr": groups["attribution"], "an": groups["analytics"]}
    if not any([await redis.exists(k) for k in keys.OLD_LAYOUT_KEYS]):
        say("nothing of the old key layout found")
        return moved
    found = [k.decode() async for k in redis.scan_iter(match=f"{REDIS_PREFIX}*", count=5000)]
    # the clocks last: while one is left, a run cut short is taken up again by the next
    found.sort(key=lambda k: k in keys.OLD_LAYOUT_KEYS)
    for key in found:
        if "}" in key and not customer.match(key) or _unit_layout(key, partitions):
            continue  # the unit layout (or the history's keys, which had it already)
        if m := customer.match(key):
            kind, tenant, who = m.groups()
            shard = shard_of(who, partitions)
            await redis.rename(key, state_key[kind](tenant, shard, who))
            units.add((tenant, shard))
            moved[f"state:{kind}"] += 1
        elif m := timers.match(key):
            family, tenant, shard_text = m.groups()
            await redis.rename(key, timer_key[family](tenant, int(shard_text)))
            units.add((tenant, int(shard_text)))
            moved["timers"] += 1
        elif m := outbox.match(key):
            group = m.group(1) or outbox_group[m.group(2)]
            await redis.rename(key, keys.outbox_key(group, FLOOR, int(m.group(3))))
            units.add((FLOOR, int(m.group(3))))
            moved["outbox"] += 1
        else:
            moved += await _other(redis, key, units, partitions)
    await Units(redis).add(units | {(FLOOR, s) for _, s in units})
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(moved.items()))
    say(f"moved {sum(moved.values())} keys into the unit layout ({kinds})")
    return moved


_UNIT_STATE = re.compile(rf"{re.escape(REDIS_PREFIX)}[cta]:\{{[^:]*:(\d+)\}}:(.*)$")


def _unit_layout(key: str, partitions: int) -> bool:
    """Whether `key` is a state of the unit layout already (a run cut short and taken up again):
    `{tenant:shard}:customer` with the customer's own shard. Such a key could also be of the old
    layout, `{tenant:customer}` with a customer id like "3}:x", only if that id's shard happened
    to be the digits it starts with."""
    m = _UNIT_STATE.match(key)
    return m is not None and shard_of(m.group(2), partitions) == int(m.group(1))


async def _clock(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    for field, value in (await redis.hgetall(key)).items():
        tenant, shard = field.decode().rsplit("|", 1)
        await redis.set(keys.clock_key(_CLOCKS[m.group(1)], tenant, int(shard)), value)
        units.add((tenant, int(shard)))
    await redis.delete(key)
    return "clocks"


async def _summary(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    await redis.delete(key)  # the stager's per-tenant clock: read from the shard clocks now
    return "clocks"


async def _fence(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    by_shard: dict[int, dict[bytes, bytes]] = {}
    for tp, offset in (await redis.hgetall(key)).items():
        by_shard.setdefault(int(tp.rsplit(b":", 1)[1]), {})[tp] = offset
    for shard, offsets in by_shard.items():
        await redis.hset(keys.applied_offsets_key(m.group(1), FLOOR, shard), mapping=offsets)
        units.add((FLOOR, shard))
    await redis.delete(key)
    return "fences"


async def _counts(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    await redis.rename(key, keys.counts_key(m.group(1), 0, m.group(2)))
    units.add((m.group(1), 0))
    return "counts"


async def _log(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    tenant, model = m.groups()
    split: dict[int, dict[bytes, float]] = {}
    for member, score in await redis.zrange(key, 0, -1, withscores=True):
        split.setdefault(shard_of(member.decode().split(SEP, 1)[0], partitions), {})[member] = score
    for shard, members in split.items():
        await redis.zadd(keys.log_key(tenant, shard, model), members)
        units.add((tenant, shard))
    await redis.delete(key)
    return "logs"


async def _campaigns(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    tenant = m.group(1)
    for campaign in await redis.hkeys(key):  # its counters with it (the meta names them)
        old = f"{REDIS_PREFIX}attr:campaign:{tenant}:{campaign.decode()}"
        if await redis.exists(old):
            await redis.rename(old, keys.campaign_key(tenant, 0, campaign.decode()))
    await redis.rename(key, keys.campaigns_key(tenant, 0))
    units.add((tenant, 0))
    return "campaigns"


async def _results(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    await redis.rename(key, keys.campaign_results_key(m.group(1), 0))
    units.add((m.group(1), 0))
    return "campaigns"


async def _failures(redis: Any, key: str, m: re.Match[str], units: Units_, partitions: int) -> str:
    for field, reason in (await redis.hgetall(key)).items():
        await redis.hset(keys.campaign_failures_key(m.group(1), int(field.rsplit(b"|", 1)[1])), field, reason)
    await redis.delete(key)
    return "campaigns"


_OTHERS = [
    (re.compile(r"(clock:shards|trg:clock|attr:clock|an:clock)"), _clock),
    (re.compile(r"clock"), _summary),
    (re.compile(r"applied:(.+)"), _fence),
    (re.compile(r"counts:([^:]*):([a-z_]+)"), _counts),
    (re.compile(r"log:([^:]*):([a-z_]+)"), _log),
    (re.compile(r"attr:campaigns:([^:]*)"), _campaigns),
    (re.compile(r"an:campaigns:([^:]*)"), _results),
    (re.compile(r"an:campaign-failures:([^:]*)"), _failures),
]


async def _other(redis: Any, key: str, units: Units_, partitions: int) -> Counter[str]:
    """Clocks, fences, counts, logs and campaign keys of the old layout."""
    name = key.removeprefix(REDIS_PREFIX)
    for pattern, move in _OTHERS:
        if m := pattern.fullmatch(name):
            return Counter([await move(redis, key, m, units, partitions)])
    return Counter()
