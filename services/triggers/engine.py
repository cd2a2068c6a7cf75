"""Applies batches of transitions and events to trigger state in Redis and sends decisions.

Per batch: skip messages already applied (offset fence), decode, group by customer, read every
customer's state in one round trip, run the pure rules and fire the timers the watermark has
reached, then write states, timer indexes, the decisions (into an outbox), the clock and the
applied offsets in one MULTI/EXEC; then send the decisions and clear them from the outbox.
A crash before the MULTI leaves nothing (the batch is redelivered and decided again to the same
trigger ids); a crash after it leaves the decisions in the outbox, and the worker that next owns
the shard sends only those not already on Kafka. So each decision reaches Kafka once. The loop
itself (fence, decoding, clocks, timers by watermark, dead letters) is the shared
`services.common.engine.StreamEngine`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis

from services.common import keys
from services.common.avro import Codec
from services.common.constants import (
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
)
from services.common.engine import Batch, DeadLetters, StreamEngine, WritePlan
from services.common.outbox import SentSince, pack
from services.common.produce import Send, SendTo
from services.triggers.config import TriggerConfig
from services.triggers.domain import (
    CartIn,
    Decision,
    Input,
    OrderIn,
    TransitionIn,
    is_repeat,
    take,
)
from services.triggers.inputs import FIELDS, to_input
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings
from services.triggers.state import TriggerState, decode_state, encode_state

__all__ = ["CLOCK", "OUTPUT_TOPICS", "TriggerEngine"]

log = logging.getLogger(__name__)
CLOCK = "triggers"  # the name of the triggers' clocks (`keys.clock_key`)
OUTPUT_TOPICS = {
    "coupons": TOPIC_TRIGGERS_COUPONS,
    "reminders": TOPIC_TRIGGERS_REMINDERS,
    "outreach": TOPIC_TRIGGERS_OUTREACH,
}


@dataclass
class _Customer:
    tenant: str
    customer: str
    shard: int
    state: TriggerState
    decisions: list[Decision] = field(default_factory=list)
    arrived: int = 0  # Kafka timestamp (ms) of the newest message that made decisions
    accepted: list[int] = field(default_factory=list)  # acceptance (ms) of the events behind decisions


def _accepted(cause: Input | None) -> int:
    """When the event behind a decision's cause was accepted at ingest (ms), 0: not known."""
    return cause.accepted if isinstance(cause, TransitionIn | OrderIn | CartIn) else 0


class TriggerEngine(StreamEngine[Input]):
    """The triggers on the shared loop: transitions, events and timers become decisions, which
    go through the outbox (written in the batch's MULTI, sent after it), so each reaches Kafka
    once whatever crashes. A shard's clock follows the stager's progress on it."""

    metrics: TriggerMetrics
    settings: TriggerSettings

    def __init__(
        self,
        *,
        redis: Redis,
        send: Send,
        codec: Codec,
        config: TriggerConfig,
        settings: TriggerSettings,
        metrics: TriggerMetrics,
        sent_since: SentSince,
        shards: Callable[[], Iterable[int]] | None = None,
        send_to: SendTo | None = None,
    ) -> None:
        """`send(topic, key, value)` produces; `sent_since` finds outbox records already on
        Kafka; `shards()` are the partitions this worker owns (default: every partition);
        `send_to(topic, partition, value)` writes the progress records (None: none written)."""
        super().__init__(
            redis=redis,
            codec=codec,
            settings=settings,
            metrics=metrics,
            group=settings.triggers_group,
            source=f"triggers:{settings.triggers_group}",
            send=send,
            sent_since=sent_since,
            clock=CLOCK,
            timers_key=keys.trigger_timers_key,
            shards=shards or (lambda: range(settings.partitions)),
            fields=FIELDS,
            on_recovered=self._recovered,
            # a shard's time passes only what the stager declared complete on it, so no transition
            # comes after its time; the triggers declare theirs on the suppressed topic in turn
            follow_upstream=settings.triggers_follow_stager,
            follow_source=f"{settings.triggers_follow}:",
            progress_topic=TOPIC_TRIGGERS_SUPPRESSED,
            send_to=send_to,
        )
        self.config = config

    def _recovered(self, already_sent: int, sent_now: int) -> None:
        self.metrics.recovered.labels("already_sent").inc(already_sent)
        self.metrics.recovered.labels("sent").inc(sent_now)

    def to_input(self, schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Input] | None:
        return to_input(schema, record, origin)

    # --- messages ----------------------------------------------------------------------------
    async def apply(self, batch: Batch[Input]) -> None:
        groups, dead, stamps = batch.groups, batch.dead, batch.stamps
        repeats = late = 0

        def decide(cust: _Customer) -> None:
            nonlocal repeats, late
            group = groups[(cust.tenant, cust.customer)]
            repeats += sum(1 for item in group.items if is_repeat(cust.state, item))
            watermark = self.watermark(cust.tenant, cust.shard)
            # an event read here was accepted when ingest handed it to Kafka (its record's timestamp)
            items = [replace(i, accepted=stamps.get(i.origin, 0)) if isinstance(i, OrderIn | CartIn) else i
                     for i in group.items]  # fmt: skip
            made, behind_clock, rejected = take(cust.state, items, watermark, self.config, cust.tenant,
                                                cust.customer)  # fmt: skip
            late += behind_clock
            self.reject(cust.shard, rejected, dead)
            for cause, decision in made:
                cust.decisions.append(decision)
                if cause is not None:
                    cust.arrived = group.arrived
                    if accepted := _accepted(cause):
                        cust.accepted.append(accepted)

        wanted = [(t, c, group.shard) for (t, c), group in groups.items()]
        await self._transact((batch.tenant, batch.shard), wanted, decide, batch.offsets, dead)
        self.metrics.repeats.inc(repeats)
        self.metrics.late.inc(late)
        kinds = Counter(type(item).__name__ for group in groups.values() for item in group.items)
        for kind, n in kinds.items():
            self.metrics.inputs.labels(kind.removesuffix("In").lower()).inc(n)

    # --- timers ------------------------------------------------------------------------------
    async def fire(self, tenant: str, shard: int, watermark: int, customers: list[str], dead: DeadLetters) -> None:
        def decide(cust: _Customer) -> None:
            made, _, rejected = take(cust.state, [], watermark, self.config, tenant, cust.customer)
            cust.decisions += [decision for _, decision in made]
            # inputs that waited for the watermark carry when their events were accepted
            cust.accepted += [a for c, _ in made if (a := _accepted(c))]
            self.reject(cust.shard, rejected, dead)

        await self._transact((tenant, shard), [(tenant, c, shard) for c in customers], decide, {}, dead)

    async def after_tick(self, owned: set[int]) -> None:
        self.metrics.owned.set(len(owned))
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant in self.clocks:
                for shard in owned:
                    pipe.zcard(keys.trigger_timers_key(tenant, shard))
            self.metrics.backlog.set(sum(await pipe.execute()))

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
        unit: tuple[str, int],
        wanted: list[tuple[str, str, int]],
        decide: Callable[[_Customer], None],
        offsets: dict[str, int],
        dead: DeadLetters,
    ) -> None:
        """Load the customers of `wanted`, let `decide` change each, then write states, timers,
        outbox, clock and offsets in one MULTI/EXEC, and send the decisions. The states are
        WATCHed: if another worker (during a rebalance) wrote one in between, all is undone and
        decided again on the new state, so two workers never decide the same cause twice."""
        names = [keys.trigger_state_key(t, s, c) for t, c, s in wanted]

        def build(values: list[bytes | None], pipe: Any) -> tuple[list[_Customer], DeadLetters]:
            customers = [
                _Customer(t, c, shard, decode_state(data) if data else TriggerState())
                for (t, c, shard), data in zip(wanted, values, strict=True)
            ]
            for cust in customers:
                decide(cust)
            plan = self._plan(customers)
            plan.queue(pipe)
            self.outbox.queue(pipe, unit[0], plan.outbox)
            self.queue_loop_writes(pipe, unit, offsets, dead)
            return customers, plan.outbox

        customers, outbox = await self.transact(names, build)
        if outbox:
            await self.outbox.send(unit[0], outbox)
            self._count(customers)

    def _plan(self, customers: list[_Customer]) -> WritePlan:
        """States, timer sets, and the decisions for the outbox."""
        written = int(time.time() * 1000)
        plan = WritePlan()
        for cust in customers:
            plan.state(keys.trigger_state_key(cust.tenant, cust.shard, cust.customer), encode_state(cust.state))
            for d in cust.decisions:
                topic, payload = self._record(cust, d)
                plan.outbox.setdefault(cust.shard, {})[d.trigger_id] = pack(written, topic, cust.customer, payload)
            plan.timer(keys.trigger_timers_key(cust.tenant, cust.shard), cust.customer, cust.state.next_due())
        return plan

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
            for at in cust.accepted:
                self.metrics.event_to_decision.observe(max(0.0, (now - at) / 1000))
