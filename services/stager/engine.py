"""Applies batches of events to customer state in Redis and emits stage transitions.

Per batch: skip messages already applied (offset fence), decode, group by customer, read every
customer's state in one pipeline, run the pure rules, produce transitions (and referral credits),
then write states, timers, dashboard counts, the transition log, the clock and the applied
offsets in one MULTI/EXEC. A crash at any point either leaves Redis untouched (the batch is
redelivered and recomputed to the same deterministic transitions) or fully written.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common import keys
from services.common.avro import Codec
from services.common.clock import EventClock, merge_shard_clocks
from services.common.constants import TOPIC_REFERRALS, TOPIC_STAGE_TRANSITIONS, TOPICS
from services.common.deadletter import dead_letter, quarantine
from services.common.fence import OffsetFence
from services.common.messages import Message
from services.common.outbox import Outbox, SentSince, kafka_sent_since
from services.common.redisbatch import HGET_MANY, HSET_MANY
from services.stager.config import StageRules
from services.stager.dedup import fingerprint, is_repeat, remember
from services.stager.facts import FIELDS, to_fact
from services.stager.metrics import StagerMetrics
from services.stager.rules import CustomerState, Fact, Transition, next_wake, take
from services.stager.settings import StagerSettings
from services.stager.statecodec import decode_state, encode_state

__all__ = ["Engine", "Message", "transition_id"]

log = logging.getLogger(__name__)
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
# produce every (key, value) to a topic and wait for the acknowledgements
SendMany = Callable[[str, list[tuple[bytes, bytes]]], Awaitable[None]]
SendTo = Callable[[str, int, bytes], Awaitable[Awaitable[Any]]]
SEP = "\x1f"
# The schema each input topic carries: a record of another schema is dead-lettered.
TOPIC_SCHEMAS = {spec.name: spec.schemas for spec in TOPICS}


def transition_id(tenant: str, customer: str, model: str, cause: str) -> str:
    """Deterministic id: recomputing a transition after a crash gives the same id."""
    return hashlib.blake2b(f"{tenant}|{customer}|{model}|{cause}".encode(), digest_size=12).hexdigest()


@dataclass
class _Customer:
    tenant: str
    customer: str
    shard: int
    state: CustomerState
    seen: list[tuple[int, int]]
    transitions: list[Transition] = field(default_factory=list)


@dataclass
class _WritePlan:
    states: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    timers_set: dict[str, dict[str, int]] = field(default_factory=dict)
    timers_del: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    logs: dict[str, dict[str, int]] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        redis: Redis,  # decode_responses=False: keys and values come back as bytes
        send: Send,
        codec: Codec,
        rules: StageRules,
        settings: StagerSettings,
        metrics: StagerMetrics,
        shards: Callable[[], Iterable[int]] = lambda: range(12),
        send_many: SendMany | None = None,
        sent_since: SentSince | None = None,
        send_to: SendTo | None = None,
    ) -> None:
        """`send(topic, key, value)` and `send_many(topic, items)` produce; `send_to(topic,
        partition, value)` produces to a partition (the progress records; None: none written);
        `shards()` are the partitions this worker owns; `sent_since` finds outbox records
        already on Kafka (default: read them from `settings.kafka_bootstrap`)."""
        self.redis: Any = redis  # redis-py's annotations do not know the bytes/str mode
        self.send = send
        self.send_many = send_many
        self.codec = codec
        self.read = codec.reader(FIELDS)
        self.rules = rules
        self.settings = settings
        self.metrics = metrics
        self.shards = shards
        self.lock = asyncio.Lock()
        self.fence = OffsetFence(redis, settings.stager_group)
        self.clocks: dict[str, EventClock] = {}
        self.behind: Collection[tuple[str, int]] = ()  # as of the last batch
        self.send_to = send_to
        self.values: dict[str, bytes] = {}  # origin -> bytes of this batch's messages (for dead letters)
        self.marked: dict[tuple[str, int], int] = {}  # (tenant, shard) -> last progress written
        self.source = f"stager:{settings.stager_group}"
        # dead letters go out through an outbox, written with the fence: once, even across crashes
        self.outbox = Outbox(
            redis=redis,
            key=lambda shard: keys.outbox_key(settings.stager_group, shard),
            send=send,
            sent_since=sent_since or kafka_sent_since(settings.kafka_bootstrap, codec),
            grace_seconds=settings.outbox_grace_seconds,
        )

    async def start(self) -> None:
        """Load the applied-offset fence and the event-time clocks written by earlier runs."""
        await self._check_redis_config()
        await self.fence.load()
        merge_shard_clocks(self.clocks, await self.redis.hgetall(keys.shard_clock_key()), owned=None)

    async def _check_redis_config(self) -> None:
        try:
            value = await self.redis.config_get("hash-max-listpack-value")
        except ResponseError:  # CONFIG may be disabled on a managed Redis
            return
        limit = int(next(iter(value.values()), 0) or 0) if value else 0
        if limit and limit < 256:
            log.warning(
                "Redis hash-max-listpack-value is %d: customer states above it take about 200 bytes more "
                "each; set it to 1024 (the local stack and docker-compose do)",
                limit,
            )

    # --- events ------------------------------------------------------------------------------
    async def process(self, messages: Sequence[Message], behind: Collection[tuple[str, int]] = ()) -> None:
        """Apply a batch; `behind`: the (topic, partition)s with messages not yet read, which hold
        their shards' watermarks back."""
        async with self.lock:
            started = time.perf_counter()
            self.behind = behind
            await self._process(messages)
            self.metrics.batch.observe(time.perf_counter() - started)

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

    async def _process(self, messages: Sequence[Message]) -> None:
        self.values = {}
        await self.fence.refresh(messages)
        await self.outbox.recover({m.partition for m in messages})
        offsets, facts, dead = self._collect(messages)
        for tenant, clock in self.clocks.items():
            clock.settle(self.settings.lateness_ms, self.behind)
            self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
        customers = await self._load([(t, c, shard) for (t, c), (shard, _) in facts.items()])
        credits: list[tuple[str, str, Fact]] = []
        applied: dict[str, int] = {}  # metrics move once per batch, not per event
        repeats = late = 0
        for cust in customers:
            watermark = self.clocks[cust.tenant].shard(cust.shard)[1]
            fresh = []
            for fact in facts[(cust.tenant, cust.customer)][1]:
                if is_repeat(cust.seen, fact.time, fingerprint(fact.event_id)):
                    repeats += 1
                else:
                    fresh.append(fact)
            late += self._take(cust, fresh, watermark, credits, dead)
            applied[cust.tenant] = applied.get(cust.tenant, 0) + len(fresh)
        for tenant, n in applied.items():
            self.metrics.events.labels(tenant).inc(n)
        self.metrics.repeats.inc(repeats)
        self.metrics.late.inc(late)
        await self._emit(customers, credits)
        await self._write(customers, offsets, dead)
        self.fence.written(offsets)
        self.metrics.invalid.inc(sum(len(d) for d in dead.values()))
        await self.outbox.send(dead)

    def _collect(
        self, messages: Sequence[Message]
    ) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, list[Fact]]], dict[int, dict[str, bytes]]]:
        """New messages (past the applied-offset fence) decoded into facts grouped by customer;
        what cannot be decoded or applied becomes a dead letter (outbox entries per shard)."""
        offsets: dict[str, int] = {}
        facts: dict[tuple[str, str], tuple[int, list[Fact]]] = {}
        dead: dict[int, dict[str, bytes]] = {}
        now = time.monotonic()
        read, admit, clocks = self.read, self.fence.admit, self.clocks
        redelivered = 0
        for msg in messages:
            if not admit(msg, offsets):
                redelivered += 1
                continue
            try:
                if msg.value is None:
                    raise ValueError("null value")
                schema, record = read(msg.value)
                expected = TOPIC_SCHEMAS.get(msg.topic)
                if expected is not None and schema not in expected:
                    raise ValueError(f"wrong schema: {schema} on {msg.topic} (which carries {', '.join(expected)})")
                origin = f"{msg.topic}|{msg.partition}|{msg.offset}"
                mapped = to_fact(schema, record, origin)
                self.values[origin] = msg.value
            except Exception as exc:  # noqa: BLE001 - whatever the input, the partition flows on
                ident, entry = dead_letter(self.codec, self.source, msg, f"undecodable: {type(exc).__name__}: {exc}")
                dead.setdefault(msg.partition, {})[ident] = entry
                continue
            if mapped is None:
                continue
            tenant, customer, fact = mapped
            clock = clocks.get(tenant)
            if clock is None:
                clock = clocks[tenant] = EventClock()
            clock.saw(msg.partition, fact.time, now, msg.topic)
            found = facts.get((tenant, customer))
            if found is None:
                facts[(tenant, customer)] = (msg.partition, [fact])
            else:
                found[1].append(fact)
        self.metrics.redelivered.inc(redelivered)
        return offsets, facts, dead

    # --- timers ------------------------------------------------------------------------------
    async def tick(self) -> int:
        """Move idle clocks forward and fire every timer due at or before its shard's watermark."""
        now = time.monotonic()
        fired = 0
        async with self.lock:
            owned = set(self.shards())
            await self.outbox.recover(owned)
            merge_shard_clocks(self.clocks, await self.redis.hgetall(keys.shard_clock_key()), owned)
            for tenant, clock in self.clocks.items():
                # No new events for a while: nothing older can still be on its way in order.
                wall = self.settings.lateness_ms if self.settings.wall_clock_advance else None
                if clock.flush_idle(owned, now, self.settings.idle_flush_seconds, wall, caught_up=not self.behind):
                    self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
                for shard in owned:
                    if shard in clock.shards:
                        fired += await self._fire(tenant, shard, clock.shards[shard][1])
            await self._progress(owned)
            if self.clocks:
                async with self.redis.pipeline(transaction=True) as pipe:
                    self._write_clocks(pipe)
                    await pipe.execute()
        return fired

    def _take(
        self,
        cust: _Customer,
        fresh: list[Fact],
        watermark: int,
        credits: list[tuple[str, str, Fact]],
        dead: dict[int, dict[str, bytes]],
    ) -> int:
        """Run the rules for one customer up to `watermark`; the number of late facts. A fact the
        rules cannot apply becomes a dead letter (with where it was read)."""
        outcome = take(cust.state, fresh, watermark, self.rules)
        for fact, reason in outcome.rejected:
            topic, partition, offset = fact.origin.rsplit("|", 2) if fact.origin else ("", "-1", "-1")
            msg = Message(topic, int(partition), int(offset), self.values.get(fact.origin, b""))
            ident, entry = dead_letter(self.codec, self.source, msg, reason)
            dead.setdefault(cust.shard, {})[ident] = entry
        cust.transitions += outcome.transitions
        credits += [(cust.tenant, referrer, fact) for referrer, fact in outcome.credits]
        horizon, limit = self.settings.repeat_horizon_ms, self.settings.repeat_limit
        for fact in outcome.applied:
            cust.seen = remember(cust.seen, fact.time, fingerprint(fact.event_id), cust.state.clock, horizon, limit)
        return outcome.late

    async def _progress(self, owned: set[int]) -> None:
        """After the timers: for each owned shard whose watermark moved, a progress record on its
        transitions partition, behind every transition up to that watermark."""
        if self.send_to is None:
            return
        pending, written = [], {}
        for tenant, clock in self.clocks.items():
            for shard in owned:
                state = clock.shards.get(shard)
                if state is None or state[1] <= self.marked.get((tenant, shard), 0):
                    continue
                record = {"tenant": tenant, "partition": shard, "watermark": state[1], "source": self.source}
                value = self.codec.encode("crm.stage.Progress", record)
                pending.append(await self.send_to(TOPIC_STAGE_TRANSITIONS, shard, value))
                written[(tenant, shard)] = state[1]
        if pending:
            await asyncio.gather(*pending)
            self.marked.update(written)

    async def _fire(self, tenant: str, shard: int, watermark: int) -> int:
        """Every customer of `shard` with a timer or a pending fact due at or before `watermark`."""
        fired = 0
        while True:
            due = await self.redis.zrangebyscore(keys.timers_key(tenant, shard), "-inf", watermark, 0, 500)
            if not due:
                return fired
            customers = await self._load([(tenant, c.decode(), shard) for c in due])
            credits: list[tuple[str, str, Fact]] = []
            dead: dict[int, dict[str, bytes]] = {}
            late = 0
            for cust in customers:
                late += self._take(cust, [], watermark, credits, dead)
            self.metrics.late.inc(late)
            await self._emit(customers, credits)
            await self._write(customers, {}, dead)
            self.metrics.invalid.inc(sum(len(d) for d in dead.values()))
            await self.outbox.send(dead)
            fired += len(customers)
            self.metrics.timers.inc(len(customers))

    # --- redis and kafka ---------------------------------------------------------------------
    async def _load(self, wanted: list[tuple[str, str, int]]) -> list[_Customer]:
        raw = await self._hget_many([keys.customer_key(t, c) for t, c, _ in wanted]) if wanted else []
        out = []
        for (tenant, customer, shard), data in zip(wanted, raw, strict=True):
            state, seen = decode_state(data) if data else (CustomerState(), [])
            out.append(_Customer(tenant, customer, shard, state, seen))
        return out

    async def _emit(self, customers: list[_Customer], credits: list[tuple[str, str, Fact]]) -> None:
        pending = []
        per_model: dict[str, int] = {}  # metric increments once per batch, not per transition
        encode = self.codec.encode
        transitions: list[tuple[bytes, bytes]] = []
        for cust in customers:
            key = cust.customer.encode()
            seq = cust.state.seq - len(cust.transitions)
            for tr in cust.transitions:
                seq += 1
                record = {
                    "transition_id": transition_id(cust.tenant, cust.customer, tr.model, tr.cause),
                    "tenant": cust.tenant,
                    "customer_id": cust.customer,
                    "model": tr.model,
                    "from_stage": tr.from_stage,
                    "to_stage": tr.to_stage,
                    "at": tr.at,
                    "cause": tr.cause,
                    "seq": seq,
                }
                transitions.append((key, encode("crm.stage.StageTransition", record)))
                per_model[tr.model] = per_model.get(tr.model, 0) + 1
        for tenant, referrer, fact in credits:
            record = {
                "event_id": f"referral:{fact.event_id}",
                "tenant": tenant,
                "customer_id": referrer,
                "referred_customer_id": "",
                "event_time": fact.time,
            }
            pending.append(
                await self.send(TOPIC_REFERRALS, referrer.encode(), encode("crm.stage.ReferralCredit", record))
            )
        for model, n in per_model.items():
            self.metrics.transitions.labels(model).inc(n)
        if self.send_many is not None:
            pending.append(self.send_many(TOPIC_STAGE_TRANSITIONS, transitions))
        else:
            pending += [await self.send(TOPIC_STAGE_TRANSITIONS, k, v) for k, v in transitions]
        if pending:
            await asyncio.gather(*pending)

    async def _write(
        self, customers: list[_Customer], offsets: dict[str, int], dead: dict[int, dict[str, bytes]]
    ) -> None:
        """Everything of one batch in one MULTI/EXEC, with few commands: one script call for all
        states, one ZADD per timer set and per transition log, one HINCRBY per changed count."""
        plan = self._plan(customers)
        states, blobs, timers_set, timers_del, counts, logs = (
            plan.states,
            plan.blobs,
            plan.timers_set,
            plan.timers_del,
            plan.counts,
            plan.logs,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            if states:
                # EVAL, not EVALSHA: a script missing from the cache must not fail half a MULTI
                pipe.eval(HSET_MANY, len(states), *states, *blobs)
                pipe.sadd(keys.tenants_key(), *{c.tenant for c in customers})
            for key, members in timers_set.items():
                pipe.zadd(key, members)
            for key, gone in timers_del.items():
                pipe.zrem(key, *gone)
            for (tenant, model, stage), delta in counts.items():
                if delta:
                    pipe.hincrby(keys.counts_key(tenant, model), stage, delta)
            for key, members in logs.items():
                pipe.zadd(key, members)
            if self.clocks:
                self._write_clocks(pipe)
            self.outbox.queue(pipe, dead)
            self.fence.queue(pipe, offsets)
            await pipe.execute()

    def _plan(self, customers: list[_Customer]) -> _WritePlan:
        plan = _WritePlan()
        horizon = self.settings.repeat_horizon_ms
        for cust in customers:
            state = cust.state
            # fingerprints the tenant's watermark has left behind can no longer meet a repeat in time
            watermark = self.clocks[cust.tenant].shard(cust.shard)[1] if cust.tenant in self.clocks else 0
            seen = [item for item in cust.seen if watermark - item[0] < horizon]
            plan.states.append(keys.customer_key(cust.tenant, cust.customer))
            plan.blobs.append(encode_state(state, seen))
            due = next_wake(state, self.rules)
            timers = keys.timers_key(cust.tenant, cust.shard)
            if due is None:
                plan.timers_del.setdefault(timers, []).append(cust.customer)
            else:
                plan.timers_set.setdefault(timers, {})[cust.customer] = due
            seq = state.seq - len(cust.transitions)
            for tr in cust.transitions:
                seq += 1
                for stage, delta in ((tr.from_stage, -1), (tr.to_stage, 1)):
                    if stage:
                        k = (cust.tenant, tr.model, stage)
                        plan.counts[k] = plan.counts.get(k, 0) + delta
                member = SEP.join((cust.customer, f"{seq:010d}", tr.from_stage or "", tr.to_stage or ""))
                plan.logs.setdefault(keys.log_key(cust.tenant, tr.model), {})[member] = tr.at
        return plan

    async def _hget_many(self, names: list[str]) -> list[bytes | None]:
        return list(await self.redis.eval(HGET_MANY, len(names), *names))

    def _write_clocks(self, pipe: Any) -> None:
        # this worker's view; `crm replay` and the dashboards read the shard clocks of all workers
        pipe.hset(keys.clock_key(), mapping={t: f"{c.latest}:{c.watermark}" for t, c in self.clocks.items()})
        owned = set(self.shards())  # a shard another worker now owns is that worker's to write
        shards = {
            f"{t}|{p}": f"{v[0]}:{v[1]}" for t, c in self.clocks.items() for p, v in c.shards.items() if p in owned
        }
        if shards:
            pipe.hset(keys.shard_clock_key(), mapping=shards)
