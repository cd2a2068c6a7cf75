"""Answers over a tenant's whole population: each shard's history read in the parts the instants
need (`services.analytics.store.load_for_read`), the shards' answers added up.

Counts and flows at any instant take time that does not grow with history: per shard one
snapshot and at most `snapshot_every` days of changes, plus the instant's own day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap

from services.analytics.history import NONE, History
from services.analytics.store import load_for_read
from services.common.constants import MODEL_STAGES

__all__ = ["Flow", "counts", "flow", "members", "series"]


async def _histories(
    redis: Any, tenant: str, model: str, instants: Sequence[int], partitions: int, snapshot_every: int
) -> list[History]:
    stages = MODEL_STAGES[model]
    return list(
        await asyncio.gather(
            *(
                load_for_read(redis, tenant, model, shard, stages, instants, snapshot_every)
                for shard in range(partitions)
            )
        )
    )


async def counts(
    redis: Any, tenant: str, model: str, at: int, *, partitions: int, snapshot_every: int = 7
) -> dict[str, int]:
    """Each stage of `model` (lowest first) -> its customers at instant `at`."""
    total = dict.fromkeys(MODEL_STAGES[model], 0)
    for history in await _histories(redis, tenant, model, [at], partitions, snapshot_every):
        for stage, n in history.counts_at(at).items():
            total[stage] += n
    return total


async def series(
    redis: Any, tenant: str, model: str, instants: Sequence[int], *, partitions: int, snapshot_every: int = 7
) -> list[dict[str, int]]:
    """`counts` at each of `instants` (each shard read once for all of them)."""
    totals = [dict.fromkeys(MODEL_STAGES[model], 0) for _ in instants]
    for history in await _histories(redis, tenant, model, instants, partitions, snapshot_every):
        for total, at in zip(totals, instants, strict=True):
            for stage, n in history.counts_at(at).items():
                total[stage] += n
    return totals


async def members(
    redis: Any, tenant: str, model: str, at: int, *, partitions: int, snapshot_every: int = 7
) -> list[dict[str, BitMap]]:
    """Per shard, each stage's members (dense ids of that shard) at instant `at`."""
    return [h.members_at(at) for h in await _histories(redis, tenant, model, [at], partitions, snapshot_every)]


@dataclass(frozen=True, slots=True)
class Flow:
    """Customers by (stage at t0, stage at t1), `none` for no stage (new since t0, lost by t1)."""

    stages: tuple[str, ...]
    cells: dict[tuple[str, str], int]

    def matrix(self) -> list[list[int]]:
        """Rows: stage at t0 then `none`; columns: stage at t1 then `none` (stayers on the diagonal)."""
        axis = (*self.stages, NONE)
        return [[self.cells.get((a, b), 0) for b in axis] for a in axis]

    def adjacent_rates(self) -> dict[str, float | None]:
        """ "a->b" for each pair of adjacent stages (b next above a): the share of a's customers at
        t0 who were in b or a stage above it at t1 (None when a had none): the Data Bank's
        conversion between layers (one who skipped b, say A to P, converted from A too)."""
        out: dict[str, float | None] = {}
        for i, (a, b) in enumerate(zip(self.stages, self.stages[1:], strict=False)):
            base = sum(n for (s0, _), n in self.cells.items() if s0 == a)
            up = sum(self.cells.get((a, s), 0) for s in self.stages[i + 1 :])
            out[f"{a}->{b}"] = up / base if base else None
        return out

    def as_dict(self) -> dict[str, Any]:
        axis = [*self.stages, NONE]
        return {"stages": axis, "matrix": self.matrix(), "adjacent_conversion": self.adjacent_rates()}


async def flow(
    redis: Any, tenant: str, model: str, t0: int, t1: int, *, partitions: int, snapshot_every: int = 7
) -> Flow:
    """The full flow matrix of `model` between instants `t0` and `t1`."""
    cells: dict[tuple[str, str], int] = {}
    for history in await _histories(redis, tenant, model, [t0, t1], partitions, snapshot_every):
        for pair, n in history.flow(t0, t1).items():
            cells[pair] = cells.get(pair, 0) + n
    return Flow(MODEL_STAGES[model], cells)
