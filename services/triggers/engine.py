"""Applies batches of transitions and events to trigger state in Redis and sends decisions.

Per batch: skip messages already applied (offset fence), decode, group by customer, read every
customer's state in one round trip, run the pure rules and fire the timers the watermark has
reached, then write states, timer indexes, the decisions (into an outbox), the clock and the
applied offsets in one MULTI/EXEC; then send the decisions and clear them from the outbox.
A crash before the MULTI leaves nothing (the batch is redelivered and decided again to the same
trigger ids); a crash after it leaves the decisions in the outbox, and the worker that next owns
the shard sends only those not already on Kafka. So each decision reaches Kafka once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.common import keys
from services.common.avro import Codec
from services.common.clock import EventClock, merge_shard_clocks
from services.common.constants import (
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
    TOPICS,
)
from services.common.deadletter import dead_letter, quarantine
from services.common.fence import OffsetFence
from services.common.messages import Message
from services.common.outbox import Outbox, SentSince, pack
from services.common.redisbatch import HGET_MANY, HSET_MANY
from services.triggers.config import TriggerConfig
from services.triggers.domain import (
    CartIn,
    Decision,
    Input,
    OrderIn,
    ProfileIn,
    TransitionIn,
    is_repeat,
    take,
)
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings
from services.triggers.state import TriggerState, decode_state, encode_state

__all__ = ["OUTPUT_TOPICS", "TriggerEngine", "to_input"]

log = logging.getLogger(__name__)
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
OUTPUT_TOPICS = {
    "coupons": TOPIC_TRIGGERS_COUPONS,
    "reminders": TOPIC_TRIGGERS_REMINDERS,
    "outreach": TOPIC_TRIGGERS_OUTREACH,
}


_COMMON = ("event_id", "customer_id", "tenant", "event_time")
# The schema each input topic carries: a record of another schema is dead-lettered.
TOPIC_SCHEMAS = {spec.name: spec.schemas for spec in TOPICS}
# The fields `to_input` reads of the high-volume events; transitions and profiles are read whole.
FIELDS: dict[str, tuple[str, ...]] = {
    "crm.events.Order": (*_COMMON, "order_id", "status"),
    "crm.events.Cart": (*_COMMON, "action"),
}


def _millis(value: Any) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


# Event times the rules can work with: 1970 to year ~5000 (epoch ms).
MAX_TIME_MS = 10**14


def to_input(schema: str, record: dict[str, Any], origin: str = "") -> tuple[str, str, Input] | None:
    """(tenant, customer, input) of a decoded record; None for records no trigger reads.
    ValueError for an event time the rules cannot work with. `origin`: where it was read."""
    found = _to_input(schema, record, origin)
    if found is not None and not 0 <= found[2].time < MAX_TIME_MS:
        raise ValueError(f"out of range: event time {found[2].time}")
    if found is not None and ":" in found[0]:  # it leads the customer's Redis key, up to a ':'
        raise ValueError("out of range: a tenant must not contain ':'")
    return found


def _to_input(schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Input] | None:
    if schema == "crm.stage.StageTransition":
        item: Input = TransitionIn(
            record["transition_id"],
            record["model"],
            record["from_stage"],
            record["to_stage"],
            _millis(record["at"]),
            record.get("seq", 0),
            origin,
        )
    elif schema == "crm.events.Order":
        item = OrderIn(record["event_id"], record["order_id"], record["status"], _millis(record["event_time"]), origin)
    elif schema == "crm.events.Cart":
        item = CartIn(record["event_id"], record["action"], _millis(record["event_time"]), origin)
    elif schema == "crm.events.Profile":
        item = ProfileIn(
            record["event_id"],
            _millis(record["event_time"]),
            dict(record.get("consent") or {}),
            record.get("timezone"),
            record.get("birthday"),
            origin,
        )
    else:
        return None
    return record["tenant"], record["customer_id"], item


@dataclass
class _Customer:
    tenant: str
    customer: str
    shard: int
    state: TriggerState
    decisions: list[Decision] = field(default_factory=list)
    arrived: int = 0  # Kafka timestamp (ms) of the newest message that made decisions


class TriggerEngine:
    def __init__(
        self,
        redis: Redis,  # decode_responses=False
        send: Send,
        codec: Codec,
        config: TriggerConfig,
        settings: TriggerSettings,
        metrics: TriggerMetrics,
        sent_since: SentSince,
        shards: Callable[[], Iterable[int]] = lambda: range(12),
    ) -> None:
        self.redis: Any = redis
        self.send = send
        self.codec = codec
        self.read = codec.reader(FIELDS)
        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.sent_since = sent_since
        self.shards = shards
        self.lock = asyncio.Lock()
        self.fence = OffsetFence(redis, settings.triggers_group)
        self.clocks: dict[str, EventClock] = {}
        self.behind: Collection[tuple[str, int]] = ()  # as of the last batch
        self.values: dict[str, bytes] = {}  # origin -> bytes of this batch's messages (for dead letters)
        self.source = f"triggers:{settings.triggers_group}"
        self.outbox = Outbox(
            redis=redis,
            key=keys.trigger_outbox_key,
            send=send,
            sent_since=sent_since,
            grace_seconds=settings.outbox_grace_seconds,
            on_recovered=self._recovered,
        )

    def _new_clock(self) -> EventClock:
        # Following the stager: a shard's time passes only what the stager declared complete on
        # it (crm.stage.Progress on the transitions topic), so no transition comes after its time.
        return EventClock(ceilings={} if self.settings.triggers_follow_stager else None)

    def _recovered(self, already_sent: int, sent_now: int) -> None:
        self.metrics.recovered.labels("already_sent").inc(already_sent)
        self.metrics.recovered.labels("sent").inc(sent_now)

    def reset(self) -> None:
        """After an outage: check every outbox again (a send may have failed after a MULTI)."""
        self.outbox.recovered.clear()

    async def quarantine(self, msg: Message, reason: str) -> None:
        """Dead-letter `msg` and move the fence past it, in one MULTI (a message that cannot be
        applied even alone)."""
        async with self.lock:
            parts = (self.redis, self.fence, self.outbox, self.codec, self.source)
            if await quarantine(*parts, msg=msg, reason=reason):
                self.metrics.invalid.inc()

    async def start(self) -> None:
        """Load the applied-offset fence and the clocks written by earlier runs."""
        await self.fence.load()
        merge_shard_clocks(self.clocks, await self.redis.hgetall(keys.trigger_clock_key()), None, self._new_clock)

    # --- messages ----------------------------------------------------------------------------
    async def process(self, messages: Sequence[Message], behind: Collection[tuple[str, int]] = ()) -> None:
        """Apply a batch; `behind`: the (topic, partition)s with messages not yet read, which hold
        their shards' watermarks back."""
        async with self.lock:
            self.behind = behind
            self.values = {}
            await self.fence.refresh(messages)
            offsets, inputs, dead = self._collect(messages)
            for tenant, clock in self.clocks.items():
                clock.settle(self.settings.lateness_ms, behind)
                self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
            await self.outbox.recover({m.partition for m in messages})

            repeats = late = 0

            def decide(cust: _Customer) -> None:
                nonlocal repeats, late
                found = inputs[(cust.tenant, cust.customer)][1]
                arrived = {id(item): at for at, item in found}
                for _, item in found:
                    if is_repeat(cust.state, item):
                        repeats += 1
                watermark = self.clocks[cust.tenant].shard(cust.shard)[1]
                made, behind_clock, rejected = take(
                    cust.state, [item for _, item in found], watermark, self.config, cust.tenant, cust.customer
                )
                late += behind_clock
                self._reject(cust, rejected, dead)
                for cause, decision in made:
                    cust.decisions.append(decision)
                    if cause is not None and id(cause) in arrived:
                        cust.arrived = max(cust.arrived, arrived[id(cause)])

            await self._transact([(t, c, shard) for (t, c), (shard, _) in inputs.items()], decide, offsets, dead)
            self.metrics.invalid.inc(sum(len(d) for d in dead.values()))
            self.metrics.repeats.inc(repeats)
            self.metrics.late.inc(late)
            kinds = Counter(type(item).__name__ for _, items in inputs.values() for _, item in items)
            for kind, n in kinds.items():
                self.metrics.inputs.labels(kind.removesuffix("In").lower()).inc(n)
            self.fence.written(offsets)

    def _collect(
        self, messages: Sequence[Message]
    ) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, list[tuple[int, Input]]]], dict[int, dict[str, bytes]]]:
        offsets: dict[str, int] = {}
        inputs: dict[tuple[str, str], tuple[int, list[tuple[int, Input]]]] = {}
        dead: dict[int, dict[str, bytes]] = {}
        now = time.monotonic()
        for msg in messages:
            if not self.fence.admit(msg, offsets):
                self.metrics.redelivered.inc()
                continue
            try:
                if msg.value is None:
                    raise ValueError("null value")
                schema, record = self.read(msg.value)
                expected = TOPIC_SCHEMAS.get(msg.topic)
                if expected is not None and schema not in expected:
                    raise ValueError(f"wrong schema: {schema} on {msg.topic} (which carries {', '.join(expected)})")
                if schema == "crm.stage.Progress":
                    self._progress(msg.partition, record)
                    continue
                origin = f"{msg.topic}|{msg.partition}|{msg.offset}"
                mapped = to_input(schema, record, origin)
                self.values[origin] = msg.value
            except Exception as exc:  # noqa: BLE001 - whatever the input, the partition flows on
                ident, entry = dead_letter(self.codec, self.source, msg, f"undecodable: {type(exc).__name__}: {exc}")
                dead.setdefault(msg.partition, {})[ident] = entry
                continue
            if mapped is None:
                continue
            tenant, customer, item = mapped
            clock = self.clocks.get(tenant)
            if clock is None:
                clock = self.clocks[tenant] = self._new_clock()
            clock.saw(msg.partition, item.time, now, msg.topic)
            inputs.setdefault((tenant, customer), (msg.partition, []))[1].append((msg.timestamp, item))
        return offsets, inputs, dead

    def _reject(self, cust: _Customer, rejected: list[tuple[Input, str]], dead: dict[int, dict[str, bytes]]) -> None:
        """Dead letters of the inputs the rules could not apply (with where they were read)."""
        for item, reason in rejected:
            topic, partition, offset = item.origin.rsplit("|", 2) if item.origin else ("", "-1", "-1")
            msg = Message(topic, int(partition), int(offset), self.values.get(item.origin, b""))
            ident, entry = dead_letter(self.codec, self.source, msg, reason)
            dead.setdefault(cust.shard, {})[ident] = entry

    def _progress(self, shard: int, record: dict[str, Any]) -> None:
        clock = self.clocks.get(record["tenant"])
        if clock is None:
            clock = self.clocks[record["tenant"]] = self._new_clock()
        clock.ceil(shard, _millis(record["watermark"]))

    # --- timers ------------------------------------------------------------------------------
    async def tick(self) -> int:
        """Move idle clocks forward, check outboxes of newly owned shards, and fire every timer due
        at or before its shard's watermark. Returns the number of customers whose timers fired."""
        now = time.monotonic()
        fired = 0
        async with self.lock:
            owned = set(self.shards())
            self.metrics.owned.set(len(owned))
            await self.outbox.recover(owned)
            await self._sync_clocks(owned)
            wall = self.settings.lateness_ms if self.settings.wall_clock_advance else None
            for tenant, clock in self.clocks.items():
                clock.flush_idle(owned, now, self.settings.idle_flush_seconds, wall, caught_up=not self.behind)
                self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
                for shard in owned:
                    if shard in clock.shards:
                        fired += await self._fire(tenant, shard, clock.shards[shard][1])
            if self.clocks:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for tenant in self.clocks:
                        for shard in owned:
                            pipe.zcard(keys.trigger_timers_key(tenant, shard))
                    self._write_clocks(pipe)
                    replies = await pipe.execute()
                self.metrics.backlog.set(sum(replies[: len(self.clocks) * len(owned)]))
        return fired

    async def _fire(self, tenant: str, shard: int, watermark: int) -> int:
        fired = 0
        while True:
            due = await self.redis.zrangebyscore(keys.trigger_timers_key(tenant, shard), "-inf", watermark, 0, 500)
            if not due:
                return fired

            dead: dict[int, dict[str, bytes]] = {}

            def decide(cust: _Customer, dead: dict[int, dict[str, bytes]] = dead) -> None:
                made, _, rejected = take(cust.state, [], watermark, self.config, tenant, cust.customer)
                cust.decisions += [decision for _, decision in made]
                self._reject(cust, rejected, dead)

            await self._transact([(tenant, c.decode(), shard) for c in due], decide, {}, dead)
            self.metrics.invalid.inc(sum(len(d) for d in dead.values()))
            fired += len(due)
            self.metrics.timers_fired.inc(len(due))

    # --- redis and kafka ---------------------------------------------------------------------
    def _record(self, cust: _Customer, d: Decision) -> tuple[str, bytes]:
        offer = d.rule.offer
        record = {
            "trigger_id": d.trigger_id,
            "tenant": cust.tenant,
            "customer_id": cust.customer,
            "rule": d.rule.name,
            "campaign_id": d.rule.campaign,
            "action": d.rule.action,
            "channel": d.rule.channel,
            "offer": None if offer is None else {"kind": offer.kind, "value": offer.value, "cost": offer.cost},
            "cause": d.cause,
            "decided_at": d.decided_at,
            "deliver_after": d.deliver_after,
            "suppressed": d.suppressed,
        }
        topic = TOPIC_TRIGGERS_SUPPRESSED if d.suppressed else OUTPUT_TOPICS[d.rule.topic]
        return topic, self.codec.encode("crm.triggers.Trigger", record)

    async def _transact(
        self,
        wanted: list[tuple[str, str, int]],
        decide: Callable[[_Customer], None],
        offsets: dict[str, int],
        dead: dict[int, dict[str, bytes]] | None = None,
    ) -> None:
        """Load the customers of `wanted`, let `decide` change each, then write states, timers,
        outbox, clock and offsets in one MULTI/EXEC, and send the decisions. The states are
        WATCHed: if another worker (during a rebalance) wrote one in between, all is undone and
        decided again on the new state, so two workers never decide the same cause twice."""
        names = [keys.trigger_state_key(t, c) for t, c, _ in wanted]
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    if names:
                        await pipe.watch(*names)
                        raw = await pipe.eval(HGET_MANY, len(names), *names)
                    else:
                        raw = []
                    customers = [
                        _Customer(t, c, shard, decode_state(data) if data else TriggerState())
                        for (t, c, shard), data in zip(wanted, raw, strict=True)
                    ]
                    for cust in customers:
                        decide(cust)
                    outbox = self._queue(pipe, customers, offsets)
                    for shard, entries in (dead or {}).items():
                        outbox.setdefault(shard, {}).update(entries)
                    self.outbox.queue(pipe, dead or {})
                    await pipe.execute()
                except WatchError:
                    self.metrics.conflicts.inc()
                    continue
            break
        if outbox:
            await self.outbox.send(outbox)
            self._count(customers)

    def _queue(self, pipe: Any, customers: list[_Customer], offsets: dict[str, int]) -> dict[int, dict[str, bytes]]:
        """Queue every write of a batch on `pipe` (then in MULTI); returns the outbox entries."""
        outbox, timers_set, timers_del = self._plan(customers)
        pipe.multi()
        if customers:
            names = [keys.trigger_state_key(c.tenant, c.customer) for c in customers]
            pipe.eval(HSET_MANY, len(names), *names, *[encode_state(c.state) for c in customers])
        for key, members in timers_set.items():
            pipe.zadd(key, members)
        for key, gone in timers_del.items():
            pipe.zrem(key, *gone)
        self.outbox.queue(pipe, outbox)
        if self.clocks:
            self._write_clocks(pipe)
        self.fence.queue(pipe, offsets)
        return outbox

    def _plan(
        self, customers: list[_Customer]
    ) -> tuple[dict[int, dict[str, bytes]], dict[str, dict[str, int]], dict[str, list[str]]]:
        """Outbox entries per shard, and the timer indexes to set and to clear."""
        written = int(time.time() * 1000)
        outbox: dict[int, dict[str, bytes]] = {}
        timers_set: dict[str, dict[str, int]] = {}
        timers_del: dict[str, list[str]] = {}
        for cust in customers:
            for d in cust.decisions:
                topic, payload = self._record(cust, d)
                outbox.setdefault(cust.shard, {})[d.trigger_id] = pack(written, topic, cust.customer, payload)
            due = cust.state.next_due()
            timers = keys.trigger_timers_key(cust.tenant, cust.shard)
            if due is None:
                timers_del.setdefault(timers, []).append(cust.customer)
            else:
                timers_set.setdefault(timers, {})[cust.customer] = due
        return outbox, timers_set, timers_del

    def _count(self, customers: list[_Customer]) -> None:
        now = time.time() * 1000
        for cust in customers:
            for d in cust.decisions:
                if d.suppressed:
                    self.metrics.suppressed.labels(d.suppressed).inc()
                else:
                    self.metrics.triggers.labels(d.rule.action, d.rule.channel).inc()
            if cust.decisions and cust.arrived:
                self.metrics.latency.observe(max(0.0, (now - cust.arrived) / 1000))

    async def _sync_clocks(self, owned: set[int]) -> None:
        merge_shard_clocks(self.clocks, await self.redis.hgetall(keys.trigger_clock_key()), owned, self._new_clock)

    def _write_clocks(self, pipe: Any) -> None:
        owned = set(self.shards())  # a shard another worker now owns is that worker's to write
        shards = {
            f"{t}|{p}": f"{v[0]}:{v[1]}" for t, c in self.clocks.items() for p, v in c.shards.items() if p in owned
        }
        if shards:
            pipe.hset(keys.trigger_clock_key(), mapping=shards)
