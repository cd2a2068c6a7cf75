"""Applies batches of events to customer state in Redis and emits stage transitions.

Per batch of a unit (a tenant's partition): skip messages already applied (offset fence), decode,
group by customer, read every customer's state in one script call, run the pure rules, produce
transitions (and referral credits), then write states, timers, dashboard counts, the transition
log, the clock and the applied offsets in one MULTI/EXEC, every key under the unit's hash tag. A
crash at any point either leaves the unit untouched (the batch is redelivered and recomputed to
the same deterministic transitions) or fully written. The loop
itself (fence, decoding, clocks, timers by watermark, dead letters) is the shared
`services.common.engine.StreamEngine`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common import keys
from services.common.avro import Codec
from services.common.constants import TOPIC_REFERRALS, TOPIC_STAGE_TRANSITIONS
from services.common.engine import Batch, DeadLetters, StreamEngine, WritePlan
from services.common.messages import Message
from services.common.outbox import SentSince, kafka_sent_since
from services.common.produce import Send, SendMany, SendTo
from services.common.redisbatch import HGET_MANY
from services.stager.config import DAY_MS, StageRules
from services.stager.dedup import fingerprint, is_repeat, remember
from services.stager.facts import FIELDS, to_fact
from services.stager.metrics import StagerMetrics
from services.stager.rules import MODELS, CustomerState, Fact, Transition, next_wake, take
from services.stager.settings import StagerSettings
from services.stager.statecodec import decode_state, encode_state

__all__ = ["CLOCK", "Engine", "Message", "transition_id"]

log = logging.getLogger(__name__)
SEP = "\x1f"
CLOCK = "stager"  # the name of the stager's clocks (`keys.clock_key`)


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


@dataclass(slots=True)
class _WritePlan(WritePlan):
    """The states and timers, and the dashboard counts and transition logs."""

    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (tenant, model, stage) -> delta
    logs: dict[str, dict[str, int]] = field(default_factory=dict)  # transition log -> member -> time


class Engine(StreamEngine[Fact]):
    """The stager on the shared loop: events become facts, the rules place each customer in the
    stages of every model, transitions go to Kafka before the batch's MULTI (their ids are
    deterministic, so a batch decided again after a crash produces the same ones)."""

    metrics: StagerMetrics
    settings: StagerSettings

    def __init__(
        self,
        *,
        redis: Redis,
        send: Send,
        codec: Codec,
        rules: StageRules,
        settings: StagerSettings,
        metrics: StagerMetrics,
        shards: Callable[[], Iterable[int]] | None = None,
        send_many: SendMany | None = None,
        sent_since: SentSince | None = None,
        send_to: SendTo | None = None,
    ) -> None:
        """`send(topic, key, value)` and `send_many(topic, items)` produce; `send_to(topic,
        partition, value)` produces to a partition (the progress records; None: none written);
        `shards()` are the partitions this worker owns (default: every partition of the event
        topics); `sent_since` finds outbox records already on Kafka (default: read them from
        `settings.kafka_bootstrap`)."""
        group = settings.stager_group
        super().__init__(
            redis=redis,
            codec=codec,
            settings=settings,
            metrics=metrics,
            group=group,
            source=f"stager:{group}",
            send=send,
            sent_since=sent_since or kafka_sent_since(settings.kafka_bootstrap, codec),
            clock=CLOCK,
            timers_key=keys.timers_key,
            shards=shards or (lambda: range(settings.partitions)),
            fields=FIELDS,
            progress_topic=TOPIC_STAGE_TRANSITIONS,
            send_to=send_to,
        )
        self.send_many = send_many
        self.rules = rules
        self.trimmed = 0.0  # when the transition logs were last trimmed

    def to_input(self, schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Fact] | None:
        return to_fact(schema, record, origin)

    async def after_tick(self, owned: set[int]) -> None:
        """Every 10 s, with a retention set: drop the transition log's entries older than the
        retention behind each tenant's watermark."""
        days = self.settings.transition_log_days
        now = time.monotonic()
        if not days or now - self.trimmed < 10:
            return
        self.trimmed = now
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant, clock in self.clocks.items():
                for shard in owned & set(clock.shards):
                    if watermark := clock.shards[shard].watermark:
                        for model in MODELS:
                            cutoff = f"({watermark - int(days * DAY_MS)}"
                            pipe.zremrangebyscore(keys.log_key(tenant, shard, model), "-inf", cutoff)
            await pipe.execute()

    async def on_start(self) -> None:
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
    async def apply(self, batch: Batch[Fact]) -> None:
        groups = batch.groups
        customers = await self._load([(t, c, group.shard) for (t, c), group in groups.items()])
        credits: list[tuple[str, str, Fact]] = []
        applied: dict[str, int] = {}  # metrics move once per batch, not per event
        repeats = late = 0
        stamps = batch.stamps
        for cust in customers:
            watermark = self.watermark(cust.tenant, cust.shard)
            fresh = []
            for fact in groups[(cust.tenant, cust.customer)].items:
                if is_repeat(cust.seen, fact.time, fingerprint(fact.event_id)):
                    repeats += 1
                else:  # with when it was accepted: its message's Kafka timestamp, set by ingest's producer
                    fresh.append(replace(fact, accepted=stamps.get(fact.origin, 0)))
            late += self._take(cust, fresh, watermark, credits, batch.dead)
            applied[cust.tenant] = applied.get(cust.tenant, 0) + len(fresh)
        for tenant, n in applied.items():
            self.metrics.events.labels(tenant).inc(n)
        self.metrics.repeats.inc(repeats)
        self.metrics.late.inc(late)
        await self._emit(customers, credits)
        await self._write((batch.tenant, batch.shard), customers, batch.offsets, batch.dead)

    # --- timers ------------------------------------------------------------------------------
    async def fire(self, tenant: str, shard: int, watermark: int, customers: list[str], dead: DeadLetters) -> None:
        """Customers of `shard` with a timer or a pending fact due at or before `watermark`."""
        loaded = await self._load([(tenant, c, shard) for c in customers])
        credits: list[tuple[str, str, Fact]] = []
        late = 0
        for cust in loaded:
            late += self._take(cust, [], watermark, credits, dead)
        self.metrics.late.inc(late)
        await self._emit(loaded, credits)
        await self._write((tenant, shard), loaded, {}, dead)

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
        self.reject(cust.shard, outcome.rejected, dead)
        cust.transitions += outcome.transitions
        credits += [(cust.tenant, referrer, fact) for referrer, fact in outcome.credits]
        horizon, limit = self.settings.repeat_horizon_ms, self.settings.repeat_limit
        for fact in outcome.applied:
            cust.seen = remember(cust.seen, fact.time, fingerprint(fact.event_id), cust.state.clock, horizon, limit)
        return outcome.late

    # --- redis and kafka ---------------------------------------------------------------------
    async def _load(self, wanted: list[tuple[str, str, int]]) -> list[_Customer]:
        raw = await self._hget_many([keys.customer_key(t, s, c) for t, c, s in wanted]) if wanted else []
        out = []
        for (tenant, customer, shard), data in zip(wanted, raw, strict=True):
            state, seen = decode_state(data) if data else (CustomerState(), [])
            out.append(_Customer(tenant, customer, shard, state, seen))
        return out

    async def _emit(self, customers: list[_Customer], credits: list[tuple[str, str, Fact]]) -> None:
        """Produce the customers' transitions (each with the acceptance time of the event that
        caused it; none for a timer's) and the referral credits."""
        pending = []
        causes: list[int] = []
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
                    "accepted_at": tr.accepted or None,
                }
                if tr.accepted:
                    causes.append(tr.accepted)
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
        now = time.time() * 1000
        for at in causes:
            self.metrics.event_to_transition.observe(max(0.0, (now - at) / 1000))

    async def _write(
        self, unit: tuple[str, int], customers: list[_Customer], offsets: dict[str, int], dead: DeadLetters
    ) -> None:
        """Everything of one unit's batch in one MULTI/EXEC, with few commands: one script call for
        all states, one ZADD per timer set and per transition log, one HINCRBY per changed count."""
        plan = self._plan(customers)
        async with self.redis.pipeline(transaction=True) as pipe:
            plan.queue(pipe)
            for (tenant, model, stage), delta in plan.counts.items():
                if delta:
                    pipe.hincrby(keys.counts_key(tenant, unit[1], model), stage, delta)
            for key, members in plan.logs.items():
                pipe.zadd(key, members)
            self.queue_loop_writes(pipe, unit, offsets, dead)
            await pipe.execute()

    def _plan(self, customers: list[_Customer]) -> _WritePlan:
        plan = _WritePlan()
        horizon = self.settings.repeat_horizon_ms
        for cust in customers:
            state = cust.state
            # fingerprints the tenant's watermark has left behind can no longer meet a repeat in time
            watermark = self.watermark(cust.tenant, cust.shard) if cust.tenant in self.clocks else 0
            seen = [item for item in cust.seen if watermark - item[0] < horizon]
            plan.state(keys.customer_key(cust.tenant, cust.shard, cust.customer), encode_state(state, seen))
            plan.timer(keys.timers_key(cust.tenant, cust.shard), cust.customer, next_wake(state, self.rules))
            seq = state.seq - len(cust.transitions)
            for tr in cust.transitions:
                seq += 1
                for stage, delta in ((tr.from_stage, -1), (tr.to_stage, 1)):
                    if stage:
                        k = (cust.tenant, tr.model, stage)
                        plan.counts[k] = plan.counts.get(k, 0) + delta
                member = SEP.join((cust.customer, f"{seq:010d}", tr.from_stage or "", tr.to_stage or ""))
                plan.logs.setdefault(keys.log_key(cust.tenant, cust.shard, tr.model), {})[member] = tr.at
        return plan

    async def _hget_many(self, names: list[str]) -> list[bytes | None]:
        return list(await self.redis.eval(HGET_MANY, len(names), *names))
