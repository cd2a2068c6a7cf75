"""Answers over a tenant's whole population: each shard's history read in the parts the instants
need (`services.analytics.store.load_for_read`), the shards' answers added up.

Counts and flows at any instant take time that does not grow with history: per shard one
snapshot and at most `snapshot_every` days of changes, plus the instant's own day.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pyroaring import BitMap

from services.analytics.audience import BEHAVIOURS, ExpressionError, Node, Op, Term, evaluate, parse, terms
from services.analytics.behaviour import browse_members, paid_members
from services.analytics.history import NONE, History
from services.analytics.store import load_for_read
from services.common import keys
from services.common.clock import tenant_clock
from services.common.constants import MAX_TIME_MS, MODEL_STAGES
from services.common.times import iso
from services.common.units import read_clocks

__all__ = [
    "AUDIENCE_NAME",
    "CLOCK",
    "EXPORT_FORMATS",
    "NOW",
    "Audiences",
    "Flow",
    "bitmap_of",
    "csv_field",
    "counts",
    "flow",
    "members",
    "series",
]


async def _histories(
    redis: Any,
    tenant: str,
    model: str,
    instants: Sequence[int],
    partitions: int,
    snapshot_every: int,
    shards: Sequence[int] | None = None,
) -> list[History]:
    stages = MODEL_STAGES[model]
    return list(
        await asyncio.gather(
            *(
                load_for_read(redis, tenant, model, shard, stages, instants, snapshot_every)
                for shard in (range(partitions) if shards is None else shards)
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
    redis: Any,
    tenant: str,
    model: str,
    at: int,
    *,
    partitions: int,
    snapshot_every: int = 7,
    shards: Sequence[int] | None = None,
) -> list[dict[str, BitMap]]:
    """Per shard (of `shards`, default all), each stage's members (dense ids of that shard) at
    instant `at`."""
    found = await _histories(redis, tenant, model, [at], partitions, snapshot_every, shards)
    return [h.members_at(at) for h in found]


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


# --- audiences ---------------------------------------------------------------------------------
CLOCK = "analytics"  # the name of the analytics worker's clocks (`keys.clock_key`)
NOW = MAX_TIME_MS - 1  # "now": every transition applied so far (behaviours: up to the latest event seen)
AUDIENCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
EXPORT_FORMATS = ("csv", "ndjson")
EXPORT_CHUNK = 5000
MAX_TAGS = 16  # saved audiences an export marks its rows with
_BITS = [tuple(i for i in range(8) if byte & (0x80 >> i)) for byte in range(256)]
MAX_DEPTH = 8  # saved audiences naming saved audiences, at most this deep


def bitmap_of(raw: bytes | None) -> BitMap:
    """The members of a Redis bitmap (bit i, most significant first in each byte, is id i)."""
    out = BitMap()
    if not raw:
        return out
    for index, byte in enumerate(raw):
        if byte:
            base = index * 8
            out.update(base + i for i in _BITS[byte])
    return out


@dataclass
class Audiences:
    """Evaluates audience expressions of one tenant at one instant, shard by shard, reading each
    term's members once (stages from the history, attributes and follows from their bitmaps,
    saved audiences from their expressions)."""

    redis: Any
    tenant: str
    at: int
    partitions: int
    snapshot_every: int = 7
    only: Sequence[int] | None = None  # the shards to answer for (default: every one)
    keep_days: int = 400  # how far back the behaviour index reaches (`analytics_behaviour_days`)
    stages: dict[str, list[dict[str, BitMap]]] = field(default_factory=dict)  # model -> per shard
    attributes: dict[tuple[str, str], list[BitMap]] = field(default_factory=dict)
    saved: dict[str, list[BitMap]] = field(default_factory=dict)  # audience name -> per shard
    behaviours: dict[str, list[BitMap]] = field(default_factory=dict)  # behaviour term -> per shard

    async def members(self, tree: Node, depth: int = 0) -> list[BitMap]:
        """Per shard, the expression's members (dense ids of the shard)."""
        await self._load(tree, depth)
        return [evaluate(tree, partial(self._term, shard=i)) for i in range(len(self.shards))]

    @property
    def shards(self) -> list[int]:
        """The shards answered for; every per-shard list is in their order."""
        return list(range(self.partitions) if self.only is None else self.only)

    async def count(self, tree: Node) -> int:
        return sum(len(b) for b in await self.members(tree))

    async def values(self, name: str) -> list[str]:
        """Every value attribute `name` has taken in any shard."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                pipe.smembers(keys.attribute_values_key(self.tenant, shard, name))
            found = await pipe.execute()
        return sorted({v.decode() for values in found for v in values})

    async def dimension(self, name: str) -> dict[str, list[BitMap]]:
        """value -> per-shard members, for a profile attribute or a model's stages (at the instant)."""
        if name in MODEL_STAGES:
            await self._stages(name)
            return {s: [shard[s] for shard in self.stages[name]] for s in MODEL_STAGES[name]}
        values = await self.values(name)
        for value in values:
            await self._attribute(name, value)
        return {value: self.attributes[(name, value)] for value in values}

    async def names(self, shard: int, ids: list[int]) -> list[str | None]:
        """The customers of `ids` on `shard`, in their order."""
        found = await self.redis.hmget(keys.customer_names_key(self.tenant, shard), ids) if ids else []
        return [None if n is None else n.decode() for n in found]

    async def save(self, name: str, text: str) -> dict[str, Any]:
        """Save audience `name` (replacing one of that name) once its expression parses and every
        audience it names exists; its record with its count now. ValueError for a bad name."""
        if not AUDIENCE_NAME.fullmatch(name):
            raise ValueError("`name`: 1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
        tree = parse(text)
        if any(t.kind == "audience" and t.value == name for t in terms(tree)):
            raise ValueError(f"audience {name!r} cannot name itself")
        await self.inline(tree, seen=(name,))  # no cycle through other saved audiences either
        count = await self.count(tree)
        record = {"expression": text, "saved_at": iso(int(time.time() * 1000))}
        await self.redis.hset(keys.audiences_key(self.tenant), name, json.dumps(record))
        return {"name": name, **record, "count": count}

    async def export(self, tree: Node, fmt: str, tags: Sequence[str] = ()) -> AsyncIterator[str]:
        """Every customer of the audience as CSV (`customer_id,tags`) or NDJSON lines, in chunks;
        `tags`: which of these saved audiences each customer is also in. The first chunk comes
        once every audience named was found (CSV: the header; NDJSON: possibly empty)."""
        tags = list(dict.fromkeys(tags))
        if len(tags) > MAX_TAGS:
            raise ExpressionError(f"more than {MAX_TAGS} tags", 0)
        chosen = await self.members(tree)
        tagged = {tag: await self.members(parse(f"audience:{tag}")) for tag in tags}
        yield "customer_id,tags\r\n" if fmt == "csv" else ""
        for i, (shard, found) in enumerate(zip(self.shards, chosen, strict=True)):
            ids = list(found)
            for start in range(0, len(ids), EXPORT_CHUNK):
                part = ids[start : start + EXPORT_CHUNK]
                lines = []
                for ident, customer in zip(part, await self.names(shard, part), strict=True):
                    if customer is None:
                        continue
                    carried = [t for t in tags if ident in tagged[t][i]]
                    if fmt == "csv":
                        lines.append(f"{csv_field(customer)},{csv_field(' '.join(carried))}\r\n")
                    else:
                        lines.append(json.dumps({"customer_id": customer, "tags": carried}) + "\n")
                yield "".join(lines)

    def _term(self, term: Term, shard: int) -> BitMap:
        if term.kind in MODEL_STAGES:
            return self.stages[term.kind][shard][term.value]
        if term.kind == "audience":
            return self.saved[term.value][shard]
        if term.kind in BEHAVIOURS:
            return self.behaviours[str(term)][shard]
        return self.attributes[(_attribute_name(term), _attribute_value(term))][shard]

    async def _load(self, tree: Node, depth: int) -> None:
        for term in terms(tree):
            if term.kind in MODEL_STAGES:
                await self._stages(term.kind)
            elif term.kind == "audience":
                await self._audience(term, depth)
            elif term.kind in BEHAVIOURS:
                await self._behaviour(term)
            else:
                await self._attribute(_attribute_name(term), _attribute_value(term))

    async def inline(self, tree: Node, depth: int = 0, seen: tuple[str, ...] = ()) -> Node:
        """`tree` with every saved audience it names replaced by that audience's expression now;
        ExpressionError for one that is missing, nests too deep or leads back to one of `seen`."""
        if isinstance(tree, Term):
            if tree.kind != "audience":
                return tree
            if tree.value in seen:
                cycle = " -> ".join((*seen, tree.value))
                raise ExpressionError(f"saved audiences name each other in a cycle: {cycle}", tree.position)
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"audience:{tree.value} nests saved audiences more than {MAX_DEPTH} deep",
                                      tree.position)  # fmt: skip
            raw = await self.redis.hget(keys.audiences_key(self.tenant), tree.value)
            if raw is None:
                raise ExpressionError(f"no saved audience {tree.value!r}", tree.position)
            return await self.inline(parse(json.loads(raw)["expression"]), depth + 1, (*seen, tree.value))
        return Op(tree.op, await self.inline(tree.left, depth, seen), await self.inline(tree.right, depth, seen))

    async def _stages(self, model: str) -> None:
        if model not in self.stages:
            self.stages[model] = await members(self.redis, self.tenant, model, self.at, partitions=self.partitions,
                                               shards=self.shards,
                                               snapshot_every=self.snapshot_every)  # fmt: skip

    async def _attribute(self, name: str, value: str) -> None:
        if (name, value) in self.attributes:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                pipe.get(keys.attribute_key(self.tenant, shard, name, value))
            found = await pipe.execute()
        self.attributes[(name, value)] = [bitmap_of(raw) for raw in found]

    async def _behaviour(self, term: Term) -> None:
        if str(term) in self.behaviours:
            return
        at = self.at
        if at == NOW:  # the window ends at the latest event the history worker has seen
            at, _ = tenant_clock(await read_clocks(self.redis, CLOCK), self.tenant)
        try:
            if term.kind == "category":
                found = await asyncio.gather(*(
                    browse_members(self.redis, self.tenant, s, term.value, at, term.days, self.keep_days)
                    for s in self.shards))  # fmt: skip
            else:
                found = await asyncio.gather(*(
                    paid_members(self.redis, self.tenant, s, at, term.days, term.value, term.count,
                                 self.keep_days)
                    for s in self.shards))  # fmt: skip
        except ValueError as e:
            raise ExpressionError(f"{term} at {iso(at)} {e}", term.position) from e
        self.behaviours[str(term)] = list(found)

    async def _audience(self, term: Term, depth: int) -> None:
        if term.value in self.saved:
            return
        if depth >= MAX_DEPTH:
            raise ExpressionError(
                f"audience:{term.value} nests saved audiences more than {MAX_DEPTH} deep", term.position
            )
        raw = await self.redis.hget(keys.audiences_key(self.tenant), term.value)
        if raw is None:
            raise ExpressionError(f"no saved audience {term.value!r}", term.position)
        self.saved[term.value] = await self.members(parse(json.loads(raw)["expression"]), depth + 1)


def _attribute_name(term: Term) -> str:
    return f"follow:{term.value}" if term.kind == "follow" else term.kind


def _attribute_value(term: Term) -> str:
    return "1" if term.kind == "follow" else term.value


def csv_field(value: str) -> str:
    """`value` as one CSV field: quoted when it holds a separator or quote, and, when a
    spreadsheet would read it as a formula (=, +, -, @, tab, CR first), led by an apostrophe."""
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        value = "'" + value
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value
