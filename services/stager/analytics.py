"""The dashboard's answers from Redis: stage counts now or at any instant, and flows between two
instants. Counts now come from per-stage counters; answers at an instant replay the transition log
(a sorted set per tenant and model, scored by event time)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.common import keys
from services.stager.engine import SEP

__all__ = ["counts_at", "counts_now", "flow", "stages_at"]

NONE = "none"
_CHUNK = 20_000


async def counts_now(redis: Any, tenant: str, model: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.counts_key(tenant, model))
    counts = {k.decode(): int(v) for k, v in raw.items()}
    return {stage: n for stage, n in sorted(counts.items()) if n}


async def stages_at(redis: Any, tenant: str, model: str, at_ms: int) -> dict[str, str]:
    """customer -> stage at instant `at_ms` (every transition at or before it applied)."""
    stage: dict[str, str] = {}
    offset = 0
    key = keys.log_key(tenant, model)
    while True:
        chunk = await redis.zrange(key, "-inf", at_ms, byscore=True, offset=offset, num=_CHUNK)
        for member in chunk:
            customer, _seq, _from, to = member.decode().split(SEP)
            if to:
                stage[customer] = to
            else:
                stage.pop(customer, None)
        if len(chunk) < _CHUNK:
            return stage
        offset += _CHUNK


async def counts_at(redis: Any, tenant: str, model: str, at_ms: int) -> dict[str, int]:
    return dict(sorted(Counter((await stages_at(redis, tenant, model, at_ms)).values()).items()))


async def flow(redis: Any, tenant: str, model: str, from_ms: int, to_ms: int) -> dict[str, int]:
    """ "from->to" -> customers whose stage at `from_ms` differs from their stage at `to_ms`
    ("none" for no stage: newly arrived or lost)."""
    before = await stages_at(redis, tenant, model, from_ms)
    after = await stages_at(redis, tenant, model, to_ms)
    moves: Counter[str] = Counter()
    for customer in before.keys() | after.keys():
        a, b = before.get(customer, NONE), after.get(customer, NONE)
        if a != b:
            moves[f"{a}->{b}"] += 1
    return dict(sorted(moves.items()))
