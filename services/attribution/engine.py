"""Attribution on the shared loop: touches, orders and behaviour in, campaign figures in Redis and
attribution records on `crm.attribution` out.

Per batch (and per due timer): read each customer's state WATCHed, take the inputs as of the
shard's watermark (`services.attribution.model.advance`: every trial's result again, less what
the campaign counters held of it), then write the states, the timers (a window's end, an order to
credit, something to forget), the counter changes, the attribution records (into the outbox),
the clock and the applied offsets in one MULTI/EXEC per unit (a tenant's shard: the counters are
kept per shard and summed by readers, `services.attribution.store`). The counters are exactly the sum of the
trials' results, whatever crashes: a batch is written whole or not at all, and one decided twice
(a rebalance) is undone by the WATCH.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from services.attribution.config import DAY_MS, AttributionConfig
from services.attribution.inputs import FIELDS, to_input
from services.attribution.metrics import AttributionMetrics
from services.attribution.model import AttributionState, Credit, Input, Touch, advance, next_due
from services.attribution.readout import readout_record
from services.attribution.settings import AttributionSettings
from services.attribution.state import decode_state, encode_state
from services.attribution.store import campaign_counters
from services.common import keys
from services.common.avro import Codec
from services.common.constants import TOPIC_ATTRIBUTION, TOPIC_CAMPAIGN_READOUTS
from services.common.engine import Batch, DeadLetters, StreamEngine, WritePlan
from services.common.outbox import SentSince, pack
from services.common.produce import Send

__all__ = ["CLOCK", "AttributionEngine", "attribution_id"]

CLOCK = "attribution"  # the name of attribution's clocks (`keys.clock_key`)


def attribution_id(tenant: str, customer: str, order_id: str, trigger_id: str) -> str:
    """Deterministic: crediting the order again after a crash gives the same id."""
    return hashlib.blake2b(f"{tenant}|{customer}|{order_id}|{trigger_id}".encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class _Writes(WritePlan):
    """The states and timers, the campaign counter changes and what each campaign is."""

    counters: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # (tenant, campaign) -> changes
    campaigns: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant -> campaign -> "<rule>|<days>"
    credits: list[Credit] = field(default_factory=list)


class AttributionEngine(StreamEngine[Input]):
    """Attribution on the shared loop (see the module's text)."""

    metrics: AttributionMetrics
    settings: AttributionSettings

    def __init__(
        self,
        *,
        redis: Redis,
        send: Send,
        codec: Codec,
        config: AttributionConfig,
        settings: AttributionSettings,
        metrics: AttributionMetrics,
        sent_since: SentSince,
        shards: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        """`send(topic, key, value)` produces; `sent_since` finds outbox records already on
        Kafka; `shards()` are the partitions this worker owns (default: every partition)."""
        super().__init__(
            redis=redis,
            codec=codec,
            settings=settings,
            metrics=metrics,
            group=settings.attribution_group,
            source=f"attribution:{settings.attribution_group}",
            send=send,
            sent_since=sent_since,
            clock=CLOCK,
            timers_key=keys.attribution_timers_key,
            shards=shards or (lambda: range(settings.partitions)),
            fields=FIELDS,
            follow_upstream=settings.attribution_follow_triggers,
        )
        self.config = config
        self.first_touch = config.model == "first_touch"
        self.gauged = 0.0  # when the open-windows gauge was last read (and readouts published)
        self.published: dict[tuple[str, str], tuple[int, tuple[tuple[str, int], ...]]] = {}

    def to_input(self, schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Input] | None:
        return to_input(schema, record, origin, self.config)

    async def apply(self, batch: Batch[Input]) -> None:
        wanted = [(t, c, group.shard, group.items) for (t, c), group in batch.groups.items()]
        await self._settle((batch.tenant, batch.shard), wanted, batch.offsets, batch.dead)

    async def fire(self, tenant: str, shard: int, watermark: int, customers: list[str], dead: DeadLetters) -> None:
        await self._settle((tenant, shard), [(tenant, c, shard, []) for c in customers], {}, dead)

    async def after_tick(self, owned: set[int]) -> None:
        """Every `attribution_readout_seconds`: the open-windows gauge and, from the worker that
        owns partition 0, a `crm.attribution.readouts` record of each campaign whose counters
        changed since it last published (the latest record of a campaign holds)."""
        now = time.monotonic()
        if now - self.gauged < self.settings.attribution_readout_seconds:
            return
        self.gauged = now
        for tenant, clock in self.clocks.items():
            found = await campaign_counters(self.redis, tenant)
            campaigns = {campaign: meta for campaign, (meta, _) in found.items()}
            counters = [summed for _, summed in found.values()]
            self.metrics.open_windows.labels(tenant).set(
                sum(c.get("open|treatment|trials", 0) + c.get("open|control|trials", 0) for c in counters)
            )
            if 0 in owned:
                await self._publish(tenant, clock.watermark, campaigns, counters)

    async def _publish(
        self, tenant: str, as_of: int, campaigns: dict[str, str], counters: list[dict[str, int]]
    ) -> None:
        pending = []
        for (campaign, meta), mine in zip(campaigns.items(), counters, strict=True):
            said = (as_of, tuple(sorted(mine.items())))
            if self.published.get((tenant, campaign)) == said:
                continue
            rule, _, days = meta.rpartition("|")
            record = readout_record(tenant, campaign, mine, rule=rule, window_days=int(days or 0), as_of=as_of)
            value = self.codec.encode("crm.attribution.CampaignReadout", record)
            pending.append(await self.send(TOPIC_CAMPAIGN_READOUTS, f"{tenant}|{campaign}".encode(), value))
            self.published[(tenant, campaign)] = said
        if pending:
            await asyncio.gather(*pending)

    # --- one MULTI per batch -------------------------------------------------------------------
    async def _settle(
        self,
        unit: tuple[str, int],
        wanted: list[tuple[str, str, int, list[Input]]],
        offsets: dict[str, int],
        dead: DeadLetters,
    ) -> None:
        names = [keys.attribution_state_key(t, s, c) for t, c, s, _ in wanted]
        shard = unit[1]

        def build(values: list[bytes | None], pipe: Any) -> _Writes:
            writes = self._plan(wanted, values)
            writes.queue(pipe)
            self.outbox.queue(pipe, unit[0], writes.outbox)
            for (tenant, campaign), changes in writes.counters.items():
                for counter, delta in changes.items():
                    pipe.hincrby(keys.campaign_key(tenant, shard, campaign), counter, delta)
            for tenant, campaigns in writes.campaigns.items():
                pipe.hset(keys.campaigns_key(tenant, shard), mapping=campaigns)
            self.queue_loop_writes(pipe, unit, offsets, dead)
            return writes

        writes = await self.transact(names, build)
        await self.outbox.send(unit[0], writes.outbox)
        self._count(writes)

    def _plan(self, wanted: list[tuple[str, str, int, list[Input]]], values: list[bytes | None]) -> _Writes:
        writes = _Writes()
        keep = self.config.keep_ms
        written = int(time.time() * 1000)
        late = 0
        for (tenant, customer, shard, items), data in zip(wanted, values, strict=True):
            state = decode_state(data) if data else AttributionState()
            watermark = self.watermark(tenant, shard)
            late += sum(1 for item in items if item.time < watermark)
            for item in items:
                if isinstance(item, Touch):
                    days = item.window_ms // DAY_MS
                    writes.campaigns.setdefault(tenant, {})[item.campaign] = f"{item.rule}|{days}"
            changes, credits = advance(state, items, watermark, keep, first_touch=self.first_touch)
            for campaign, change in changes.items():
                total = writes.counters.setdefault((tenant, campaign), {})
                for counter, delta in change.items():
                    total[counter] = total.get(counter, 0) + delta
            for cr in credits:
                ident, value = self._record(tenant, customer, cr)
                entry = pack(written, TOPIC_ATTRIBUTION, customer, value)
                writes.outbox.setdefault(shard, {})[f"{ident}|retracted" if cr.retracted else ident] = entry
            writes.credits += credits
            writes.state(keys.attribution_state_key(tenant, shard, customer), encode_state(state))
            writes.timer(keys.attribution_timers_key(tenant, shard), customer, next_due(state, state.as_of, keep))
        self.metrics.late.inc(late)
        return writes

    def _record(self, tenant: str, customer: str, cr: Credit) -> tuple[str, bytes]:
        ident = attribution_id(tenant, customer, cr.order_id, cr.trigger_id)
        record = {
            "attribution_id": ident,
            "tenant": tenant,
            "customer_id": customer,
            "order_id": cr.order_id,
            "amount": cr.amount_cents / 100,
            "campaign_id": cr.campaign,
            "trigger_id": cr.trigger_id,
            "group": "treatment",
            "order_time": cr.order_time,
            "touch_time": cr.touch_time,
            "window_days": cr.window_ms // DAY_MS,
            "model": self.config.model,
            "retracted": cr.retracted,
        }
        return ident, self.codec.encode("crm.attribution.Attribution", record)

    def _count(self, writes: _Writes) -> None:
        for cr in writes.credits:
            if cr.retracted:
                self.metrics.retracted.labels(cr.campaign).inc()
            else:
                self.metrics.credited.labels(cr.campaign).inc()
                self.metrics.revenue.labels(cr.campaign).inc(cr.amount_cents / 100)
        for changes in writes.counters.values():
            for group in ("treatment", "control"):
                became_final = changes.get(f"final|{group}|trials", 0)
                if became_final > 0:
                    self.metrics.finalised.labels(group).inc(became_final)
                new = changes.get(f"final|{group}|trials", 0) + changes.get(f"open|{group}|trials", 0)
                if new > 0:
                    self.metrics.trials.labels(group).inc(new)
