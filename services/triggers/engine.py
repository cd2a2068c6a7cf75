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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.common import keys
from services.common.avro import Codec
from services.common.clock import EventClock, merge_shard_clocks
from services.common.constants import (
    TOPIC_DLQ,
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
)
from services.common.errors import SchemaError
from services.common.fence import OffsetFence
from services.common.messages import Message
from services.common.redisbatch import HGET_MANY, HSET_MANY
from services.triggers.config import TriggerConfig
from services.triggers.domain import CartIn, Decision, Input, OrderIn, ProfileIn, TransitionIn, apply, fire
from services.triggers.metrics import TriggerMetrics
from services.triggers.outbox import SentSince, pack, unpack
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
# The fields `to_input` reads of the high-volume events; transitions and profiles are read whole.
FIELDS: dict[str, tuple[str, ...]] = {
    "crm.events.Order": (*_COMMON, "order_id", "status"),
    "crm.events.Cart": (*_COMMON, "action"),
}


def _millis(value: Any) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def to_input(schema: str, record: dict[str, Any]) -> tuple[str, str, Input] | None:
    """(tenant, customer, input) of a decoded record; None for records no trigger reads."""
    if schema == "crm.stage.StageTransition":
        item: Input = TransitionIn(
            record["transition_id"], record["model"], record["from_stage"], record["to_stage"], _millis(record["at"])
        )
    elif schema == "crm.events.Order":
        item = OrderIn(record["event_id"], record["order_id"], record["status"], _millis(record["event_time"]))
    elif schema == "crm.events.Cart":
        item = CartIn(record["event_id"], record["action"], _millis(record["event_time"]))
    elif schema == "crm.events.Profile":
        item = ProfileIn(
            record["event_id"],
            _millis(record["event_time"]),
            dict(record.get("consent") or {}),
            record.get("timezone"),
            record.get("birthday"),
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
        self.recovered: set[int] = set()  # shards whose outbox this worker has checked

    async def start(self) -> None:
        """Load the applied-offset fence and the clocks written by earlier runs."""
        await self.fence.load()
        merge_shard_clocks(self.clocks, await self.redis.hgetall(keys.trigger_clock_key()), owned=None)

    # --- messages ----------------------------------------------------------------------------
    async def process(self, messages: Sequence[Message]) -> None:
        async with self.lock:
            await self.fence.refresh(messages)
            offsets, inputs, dead = self._collect(messages)
            for tenant, clock in self.clocks.items():
                clock.settle(self.settings.lateness_ms)
                self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
            await self._recover({shard for shard, _ in inputs.values()})

            def decide(cust: _Customer) -> None:
                for arrived, item in sorted(inputs[(cust.tenant, cust.customer)][1], key=lambda x: x[1].time):
                    made = apply(cust.state, item, self.config, cust.tenant, cust.customer)
                    if made:
                        cust.decisions += made
                        cust.arrived = max(cust.arrived, arrived)
                watermark = self.clocks[cust.tenant].shard(cust.shard)[1]
                cust.decisions += fire(cust.state, watermark, self.config, cust.tenant, cust.customer)

            await self._dead_letters(dead)
            await self._transact([(t, c, shard) for (t, c), (shard, _) in inputs.items()], decide, offsets)
            kinds = Counter(type(item).__name__ for _, items in inputs.values() for _, item in items)
            for kind, n in kinds.items():
                self.metrics.inputs.labels(kind.removesuffix("In").lower()).inc(n)
            self.fence.written(offsets)

    def _collect(
        self, messages: Sequence[Message]
    ) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, list[tuple[int, Input]]]], list[tuple[Message, str]]]:
        offsets: dict[str, int] = {}
        inputs: dict[tuple[str, str], tuple[int, list[tuple[int, Input]]]] = {}
        dead: list[tuple[Message, str]] = []
        now = time.monotonic()
        for msg in messages:
            if not self.fence.admit(msg, offsets):
                self.metrics.redelivered.inc()
                continue
            try:
                schema, record = self.read(msg.value)
                mapped = to_input(schema, record)
            except (SchemaError, KeyError, ValueError, TypeError) as exc:
                dead.append((msg, f"undecodable: {exc}"))
                continue
            if mapped is None:
                continue
            tenant, customer, item = mapped
            self.clocks.setdefault(tenant, EventClock()).saw(msg.partition, item.time, now)
            inputs.setdefault((tenant, customer), (msg.partition, []))[1].append((msg.timestamp, item))
        return offsets, inputs, dead

    # --- timers ------------------------------------------------------------------------------
    async def tick(self) -> int:
        """Move idle clocks forward, check outboxes of newly owned shards, and fire every timer due
        at or before its shard's watermark. Returns the number of customers whose timers fired."""
        now = time.monotonic()
        fired = 0
        async with self.lock:
            owned = set(self.shards())
            self.metrics.owned.set(len(owned))
            await self._recover(owned)
            await self._sync_clocks(owned)
            wall = self.settings.lateness_ms if self.settings.wall_clock_advance else None
            for tenant, clock in self.clocks.items():
                clock.flush_idle(owned, now, self.settings.idle_flush_seconds, wall)
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

            def decide(cust: _Customer) -> None:
                cust.decisions += fire(cust.state, watermark, self.config, tenant, cust.customer)

            await self._transact([(tenant, c.decode(), shard) for c in due], decide, {})
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
        self, wanted: list[tuple[str, str, int]], decide: Callable[[_Customer], None], offsets: dict[str, int]
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
                    await pipe.execute()
                except WatchError:
                    self.metrics.conflicts.inc()
                    continue
            break
        if outbox:
            await self._send(outbox)
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
        for shard, entries in outbox.items():
            pipe.hset(keys.trigger_outbox_key(shard), mapping=entries)
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

    async def _send(self, outbox: dict[int, dict[str, bytes]]) -> None:
        pending = []
        for entries in outbox.values():
            for entry in entries.values():
                _, topic, key, payload = unpack(entry)
                pending.append(await self.send(topic, key, payload))
        await asyncio.gather(*pending)
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, entries in outbox.items():
                pipe.hdel(keys.trigger_outbox_key(shard), *entries)
            await pipe.execute()

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

    async def _recover(self, shards: set[int]) -> None:
        """Send what a crash left in the outboxes of `shards`, except what is already on Kafka.
        Entries younger than the grace period may belong to a live worker that is sending them
        (it held the shard before a rebalance); they are looked at again on a later tick."""
        for shard in sorted(shards - self.recovered):
            key = keys.trigger_outbox_key(shard)
            entries = {k.decode(): unpack(v) for k, v in (await self.redis.hgetall(key)).items()}
            cutoff = int((time.time() - self.settings.outbox_grace_seconds) * 1000)
            left = {tid: entry for tid, entry in entries.items() if entry[0] <= cutoff}
            if left:
                since = min(entry[0] for entry in left.values())
                found = await self.sent_since({entry[1] for entry in left.values()}, since, set(left))
                pending = []
                for trigger_id, (_, topic, customer, payload) in left.items():
                    if trigger_id not in found:
                        pending.append(await self.send(topic, customer, payload))
                await asyncio.gather(*pending)
                await self.redis.hdel(key, *left)
                self.metrics.recovered.labels("already_sent").inc(len(found))
                self.metrics.recovered.labels("sent").inc(len(left) - len(found))
                log.warning("outbox of shard %d: %d already on Kafka, %d sent now", shard, len(found), len(pending))
            if len(left) == len(entries):
                self.recovered.add(shard)

    async def _dead_letters(self, dead: list[tuple[Message, str]]) -> None:
        pending = []
        for msg, reason in dead:
            envelope = {
                "original": msg.value,
                "topic": msg.topic,
                "reason": reason,
                "received_at": int(time.time() * 1000),
                "source": f"triggers:{self.settings.triggers_group}",
            }
            pending.append(await self.send(TOPIC_DLQ, b"", self.codec.encode("crm.events.DeadLetter", envelope)))
            self.metrics.invalid.inc()
        if pending:
            await asyncio.gather(*pending)

    async def _sync_clocks(self, owned: set[int]) -> None:
        merge_shard_clocks(self.clocks, await self.redis.hgetall(keys.trigger_clock_key()), owned)

    def _write_clocks(self, pipe: Any) -> None:
        owned = set(self.shards())  # a shard another worker now owns is that worker's to write
        shards = {
            f"{t}|{p}": f"{v[0]}:{v[1]}" for t, c in self.clocks.items() for p, v in c.shards.items() if p in owned
        }
        if shards:
            pipe.hset(keys.trigger_clock_key(), mapping=shards)
