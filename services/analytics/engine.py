"""The history worker on the shared loop: stage transitions in, each model's stage history per
shard (`services.analytics.store`) in Redis out.

Per batch: each customer gets a dense integer id of its shard (assigned once, atomically, by a
script; an id taken by a batch that then fails is simply kept), and the transitions are added to
the open part of their model's history together with the clocks, the dead letters and the new
applied offsets in one MULTI/EXEC. Adding is a ZADD of members fixed by the Kafka offset, so a
batch applied twice (a rebalance) adds nothing twice. After the timers of a tick, every day that
the shard's watermark has passed is closed into bitmaps (one MULTI per shard, all models): no
transition of it can still arrive, since the stager declared its partition complete up to there.
A transition of a day already closed is dead-lettered (`too late`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.analytics.audience import ATTRIBUTES, FOLLOW_TARGETS, parse
from services.analytics.behaviour import Act, close_acts, queue_acts
from services.analytics.campaigns import CampaignSpec, request_id, runs
from services.analytics.history import DAY_MS, Transition
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.query import CLOCK, Audiences
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import load_for_write, queue_changes, queue_open
from services.common import keys
from services.common.avro import Codec
from services.common.constants import (
    MAX_ID_CHARS,
    MODEL_STAGES,
    TOPIC_CAMPAIGN_REQUESTS,
    checked_cents,
    checked_id,
    checked_tenant,
    checked_time,
)
from services.common.engine import Batch, DeadLetters, StreamEngine
from services.common.outbox import SentSince, pack
from services.common.produce import Send, SendTo
from services.common.times import epoch_ms, iso

__all__ = ["ASSIGN_IDS", "Act", "AnalyticsEngine", "Facts", "Input", "Move", "queue_facts", "to_input"]

log = logging.getLogger(__name__)

# KEYS[1]: customer -> id, KEYS[2]: id -> customer; ARGV: customers. Returns their ids, giving
# each new customer the next free one (the names hash's length: ids are dense from 0).
ASSIGN_IDS = """
local out = {}
for i, customer in ipairs(ARGV) do
  local id = redis.call('HGET', KEYS[1], customer)
  if not id then
    id = redis.call('HLEN', KEYS[2])
    redis.call('HSET', KEYS[2], id, customer)
    redis.call('HSET', KEYS[1], customer, id)
  end
  out[i] = tonumber(id)
end
return out
"""
FIELDS: dict[str, tuple[str, ...]] = {
    # to the last field: a record cut short is refused, not read in part
    "crm.stage.StageTransition": ("tenant", "customer_id", "model", "to_stage", "at", "seq"),
    "crm.events.Follow": ("event_id", "customer_id", "tenant", "event_time", "target_type", "action"),
    "crm.events.Browse": ("event_id", "customer_id", "tenant", "event_time", "session_id", "product_id", "category_id"),
    "crm.events.Order": ("event_id", "customer_id", "tenant", "event_time", "order_id", "status", "amount"),
}
ACTS = {"paid": "paid", "refunded": "refund"}  # order statuses the behaviour index keeps
MAX_VALUE_LENGTH = MAX_ID_CHARS  # beyond what ingest accepts by default (256)


@dataclass(frozen=True, slots=True)
class Move:
    """One stage transition as the history takes it."""

    time: int
    model: str
    stage: str | None  # None: left the model
    offset: int  # where it was read: its place in arrival order on its partition
    origin: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What one profile or follow event says of a customer now: attribute -> value (None: no
    longer, as after an unfollow). The latest event by (time, event id) decides each attribute."""

    time: int
    event_id: str
    values: tuple[tuple[str, str | None], ...]
    origin: str


Input = Move | Facts | Act


def _value(value: str, what: str) -> str | None:
    """An attribute's value (None: an empty one clears it); ValueError beyond what a key holds."""
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"out of range: {what} longer than {MAX_VALUE_LENGTH} characters")
    return checked_id(value, what) or None


def _facts(schema: str, record: dict[str, Any], origin: str) -> Facts | None:
    at, event_id = checked_time(epoch_ms(record["event_time"])), checked_id(record["event_id"], "event_id")
    values: list[tuple[str, str | None]] = []
    if schema == "crm.events.Follow":
        target = record["target_type"]
        if target not in FOLLOW_TARGETS:
            return None
        values.append((f"follow:{target}", "1" if record["action"] == "follow" else None))
    else:
        for name in ATTRIBUTES:
            given = record.get(name)
            if given is None:
                continue
            if name == "member_since":
                given = str(datetime.fromtimestamp(checked_time(epoch_ms(given)) / 1000, UTC).year)
            values.append((name, _value(given, name)))
    return Facts(at, event_id, tuple(values), origin) if values else None


def _act(schema: str, record: dict[str, Any], origin: str) -> Act | None:
    at = checked_time(epoch_ms(record["event_time"]))
    if schema == "crm.events.Browse":
        category = record["category_id"]  # none (or empty): a view of no category counts for none
        return Act(at, "browse", _named(category, "category_id"), origin) if category else None
    checked_cents(record["amount"])  # an order the stager refuses counts here neither
    kind = ACTS.get(record["status"])
    if kind is None:
        return None
    order = record["order_id"]  # (may be empty: the stager counts such an order too)
    if len(order) > MAX_VALUE_LENGTH:
        raise ValueError(f"out of range: order_id longer than {MAX_VALUE_LENGTH} characters")
    return Act(at, kind, checked_id(order, "order_id"), origin)


def to_input(schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Input] | None:
    """(tenant, customer, input) of a transition, a profile, follow, browse or order event;
    ValueError for a model or stage of no model, or a time, tenant, customer or value no history
    can hold."""
    if schema in ("crm.events.Browse", "crm.events.Order"):
        act = _act(schema, record, origin)
        if act is None:
            return None
        return _named(checked_tenant(record["tenant"]), "tenant"), _named(record["customer_id"], "customer_id"), act
    if schema in ("crm.events.Profile", "crm.events.Follow"):
        facts = _facts(schema, record, origin)
        if facts is None:
            return None
        return _named(checked_tenant(record["tenant"]), "tenant"), _named(record["customer_id"], "customer_id"), facts
    if schema != "crm.stage.StageTransition":
        return None
    model, stage = record["model"], record["to_stage"]
    stages = MODEL_STAGES.get(model)
    if stages is None:
        raise ValueError(f"out of range: unknown model {model!r}")
    if stage is not None and stage not in stages:
        raise ValueError(f"out of range: {stage!r} is no stage of {model}")
    move = Move(checked_time(epoch_ms(record["at"])), model, stage, int(origin.rsplit("|", 1)[1]), origin)
    return _named(checked_tenant(record["tenant"]), "tenant"), _named(record["customer_id"], "customer_id"), move


def _named(value: str, what: str) -> str:
    """A tenant or customer id a history can hold: not empty, not over MAX_VALUE_LENGTH."""
    if not value or len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"out of range: {what} must have 1 to {MAX_VALUE_LENGTH} characters")
    return checked_id(value, what)


class AnalyticsEngine(StreamEngine[Input]):
    """The history worker on the shared loop (see the module's text)."""

    metrics: AnalyticsMetrics
    settings: AnalyticsSettings

    def __init__(
        self,
        *,
        redis: Redis,
        send: Send,
        codec: Codec,
        settings: AnalyticsSettings,
        metrics: AnalyticsMetrics,
        sent_since: SentSince,
        shards: Callable[[], Iterable[int]] | None = None,
        send_to: SendTo | None = None,
    ) -> None:
        """`send(topic, key, value)` produces (dead letters and campaign requests); `sent_since`
        finds outbox records already on Kafka; `shards()` are the partitions this worker owns
        (default: every one); `send_to(topic, partition, value)` writes the progress records on
        crm.campaigns.requests (None: none written)."""
        super().__init__(
            redis=redis,
            codec=codec,
            settings=settings,
            metrics=metrics,
            group=settings.analytics_group,
            source=f"analytics:{settings.analytics_group}",
            send=send,
            sent_since=sent_since,
            clock=CLOCK,
            timers_key=keys.analytics_timers_key,
            shards=shards or (lambda: range(settings.partitions)),
            fields=FIELDS,
            follow_upstream=settings.analytics_follow_stager,
            progress_topic=TOPIC_CAMPAIGN_REQUESTS,
            send_to=send_to,
        )
        self.snapshot_every = settings.analytics_snapshot_every
        self.closed: dict[tuple[str, int], int] = {}  # (tenant, shard) -> the last day closed in every model
        self.specs: dict[bytes, CampaignSpec] = {}  # saved JSON -> the campaign
        # (tenant, shard) -> campaign -> its latest readout (JSON) of the batch
        self.readouts: dict[tuple[str, int], dict[str, str]] = {}

    def to_input(self, schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, Input] | None:
        return to_input(schema, record, origin)

    def control(self, shard: int, schema: str, record: dict[str, Any]) -> str | None:
        """A campaign readout is kept with the batch (the latest of a campaign holds); anything
        else as the base takes it (the stager's progress)."""
        if schema != "crm.attribution.CampaignReadout":
            return super().control(shard, schema, record)
        tenant, campaign = checked_tenant(record["tenant"]), checked_id(record["campaign_id"], "campaign_id")
        if not campaign:
            raise ValueError("out of range: an empty campaign_id")
        shown = {**record, "as_of": iso(checked_time(epoch_ms(record["as_of"])))}
        self.readouts.setdefault((tenant, shard), {})[campaign] = json.dumps(shown, allow_nan=False)
        return tenant

    def reset(self) -> None:
        super().reset()
        self.closed.clear()  # another worker may have closed days of a shard meanwhile

    async def apply(self, batch: Batch[Input]) -> None:
        unit = (batch.tenant, batch.shard)
        shown = self.readouts.pop(unit, {})
        added, facts, acts = await self._sort(batch)
        watched = [keys.attribute_state_key(t, s) for t, s in facts]

        def build(current: list[dict[str, bytes | None]], pipe: Any) -> None:
            for (tenant, shard), found in zip(facts, current, strict=True):
                queue_facts(pipe, tenant, shard, facts[(tenant, shard)], found)
            for (tenant, shard, model), entries in added.items():
                queue_open(pipe, tenant, model, shard, MODEL_STAGES[model], entries)
            for (tenant, shard), done in acts.items():
                queue_acts(pipe, tenant, shard, done)
            if shown:
                pipe.hset(keys.campaign_results_key(*unit), mapping=shown)
            self.queue_loop_writes(pipe, unit, batch.offsets, batch.dead)

        await self._watched(watched, facts, build)
        for (_, _, model), entries in added.items():
            self.metrics.kept.labels(model).inc(len(entries))

    async def _sort(
        self, batch: Batch[Input]
    ) -> tuple[
        dict[tuple[str, int, str], list[tuple[int, Transition]]],
        dict[tuple[str, int], list[tuple[int, Facts]]],
        dict[tuple[str, int], list[tuple[int, Act]]],
    ]:
        """The batch's transitions by (tenant, shard, model), facts and behaviours by (tenant,
        shard), each customer with its shard's dense id; a transition or behaviour of a closed day
        is dead-lettered."""
        shards: dict[tuple[str, int], dict[str, list[Input]]] = {}
        for (tenant, customer), group in batch.groups.items():
            shards.setdefault((tenant, group.shard), {})[customer] = group.items
        added: dict[tuple[str, int, str], list[tuple[int, Transition]]] = {}
        facts: dict[tuple[str, int], list[tuple[int, Facts]]] = {}
        acts: dict[tuple[str, int], list[tuple[int, Act]]] = {}
        for (tenant, shard), customers in shards.items():
            ids = await self._ids(tenant, shard, list(customers))
            closed = await self._closed(tenant, shard)
            late: list[tuple[Input, str]] = []
            for customer, items in customers.items():
                for m in items:
                    if isinstance(m, Facts):
                        facts.setdefault((tenant, shard), []).append((ids[customer], m))
                    elif m.time // DAY_MS <= closed:
                        late.append((m, f"too late: the history of {_day(m.time // DAY_MS)} is closed"))
                    elif isinstance(m, Act):
                        acts.setdefault((tenant, shard), []).append((ids[customer], m))
                    else:
                        entry = (m.offset, (m.time, ids[customer], m.stage))
                        added.setdefault((tenant, shard, m.model), []).append(entry)
            if late:
                self.metrics.late.inc(len(late))
                self.reject(shard, late, batch.dead)
        return added, facts, acts

    async def _watched(
        self,
        watched: list[str],
        facts: dict[tuple[str, int], list[tuple[int, Facts]]],
        build: Callable[[list[dict[str, bytes | None]], Any], None],
    ) -> None:
        """Read the attributes the facts touch WATCHed, queue everything, EXEC; again if another
        worker (holding a shard briefly during a rebalance) changed them in between."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    current: list[dict[str, bytes | None]] = []
                    if watched:
                        await pipe.watch(*watched)
                        for key, items in zip(watched, facts.values(), strict=True):
                            fields = sorted({f"{ident}|{name}" for ident, f in items for name, _ in f.values})
                            current.append(dict(zip(fields, await pipe.hmget(key, fields), strict=True)))
                    pipe.multi()
                    build(current, pipe)
                    await pipe.execute()
                    return
                except WatchError:
                    self.metrics.conflicts.inc()

    async def fire(self, tenant: str, shard: int, watermark: int, customers: list[str], dead: DeadLetters) -> None:
        """No timers: days are closed after each tick."""

    async def after_tick(self, owned: set[int]) -> None:
        await self._run_campaigns(owned)
        for tenant, clock in self.clocks.items():
            for shard in owned:
                state = clock.shards.get(shard)
                if state is None:
                    continue
                # the last day the watermark has passed whole, and no later than anything seen:
                # following the stager, an idle shard's time is what it declared, which a forged
                # or far-off progress record could put years ahead
                until = (min(state.watermark, clock.latest) + 1) // DAY_MS - 1
                if until > await self._closed(tenant, shard):
                    await self._close(tenant, shard, until)

    async def _run_campaigns(self, owned: set[int]) -> None:
        """Every run of a scheduled campaign the shard's watermark has passed, not yet fired on
        the shard: its audience on the shard as it stood at the run's time, one request per
        member through the outbox, in one MULTI with the run's mark (so once, whatever crashes);
        the progress record of the tick follows them."""
        for tenant, clock in self.clocks.items():
            raw = await self.redis.hgetall(keys.campaign_specs_key(tenant))
            specs = [spec for name, v in sorted(raw.items()) if (spec := self._spec(tenant, name, v)) is not None]
            for shard in sorted(owned):
                state = clock.shards.get(shard)
                if not specs or state is None:
                    continue
                done = await self.redis.hgetall(keys.campaign_runs_key(tenant, shard))
                for spec in specs:
                    for at in runs(spec, int(done.get(spec.name.encode(), -1)), state.watermark):
                        try:
                            await self._run(tenant, shard, spec, at)
                        except ValueError as exc:  # its audience cannot be answered there: this run alone fails
                            await self._failed(tenant, shard, spec.name, at, str(exc))

    def _spec(self, tenant: str, name: bytes, raw: bytes) -> CampaignSpec | None:
        found = self.specs.get(raw)
        if found is None:
            try:
                found = self.specs[raw] = CampaignSpec.model_validate_json(raw)
            except ValueError as exc:
                log.warning("%s: campaign %r of tenant %s cannot be read, left out: %s", self.source, name, tenant, exc)
                return None
        return found

    async def _failed(self, tenant: str, shard: int, campaign: str, at: int, reason: str) -> None:
        """A run whose audience cannot be evaluated (its data gone): recorded with its reason and
        marked done, so it never holds back the days, the progress or another campaign."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.campaign_failures_key(tenant, shard), f"{campaign}|{at}|{shard}", reason)
            pipe.hset(keys.campaign_runs_key(tenant, shard), campaign, at)
            await pipe.execute()
        self.metrics.failed_runs.labels(campaign).inc()
        log.warning("%s: campaign %s of tenant %s could not run at %s on shard %d: %s", self.source, campaign,
                    tenant, iso(at), shard, reason)  # fmt: skip

    async def _run(self, tenant: str, shard: int, spec: CampaignSpec, at: int) -> None:
        audiences = Audiences(self.redis, tenant, at, self.settings.partitions, self.snapshot_every, only=[shard],
                              keep_days=self.settings.analytics_behaviour_days)  # fmt: skip
        ids = list((await audiences.members(parse(spec.audience)))[0])
        written = int(time.time() * 1000)
        entries = {}
        offer = None if spec.offer is None else spec.offer.model_dump()
        for customer in await audiences.names(shard, ids):
            if customer is None:
                continue
            ident = request_id(tenant, spec.name, at, customer)
            record = {"request_id": ident, "tenant": tenant, "customer_id": customer, "campaign_id": spec.name,
                      "run_at": at, "action": spec.action, "channel": spec.channel, "topic": spec.topic,
                      "offer": offer, "quiet_hours": spec.quiet_hours}  # fmt: skip
            value = self.codec.encode("crm.campaigns.Request", record)
            entries[ident] = pack(written, TOPIC_CAMPAIGN_REQUESTS, customer, value)
        async with self.redis.pipeline(transaction=True) as pipe:
            self.outbox.queue(pipe, tenant, {shard: entries})
            pipe.hset(keys.campaign_runs_key(tenant, shard), spec.name, at)
            await pipe.execute()
        await self.outbox.send(tenant, {shard: entries})
        self.metrics.requests.labels(spec.name).inc(len(entries))
        log.info("%s: campaign %s ran at %s on shard %d of tenant %s: %d requests", self.source, spec.name,
                 iso(at), shard, tenant, len(entries))  # fmt: skip

    async def _close(self, tenant: str, shard: int, until: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for model, stages in MODEL_STAGES.items():
                history = await load_for_write(self.redis, tenant, model, shard, stages, self.snapshot_every)
                before = len(history.order)
                history.close_until(until)
                queue_changes(pipe, tenant, model, shard, history, before)
                self.metrics.closed.labels(model).inc(len(history.order) - before)
            await close_acts(self.redis, pipe, tenant, shard, until, self.settings.analytics_behaviour_days)
            await pipe.execute()
        self.closed[(tenant, shard)] = until

    async def _closed(self, tenant: str, shard: int) -> int:
        """The last day closed in every model of the shard (-1: none)."""
        found = self.closed.get((tenant, shard))
        if found is None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model in MODEL_STAGES:
                    pipe.hget(keys.history_key(tenant, model, shard, "meta"), "closed")
                days = await pipe.execute()
            found = self.closed[(tenant, shard)] = min(int(d) if d is not None else -1 for d in days)
        return found

    async def _ids(self, tenant: str, shard: int, customers: list[str]) -> dict[str, int]:
        names = (keys.customer_ids_key(tenant, shard), keys.customer_names_key(tenant, shard))
        ids = await self.redis.eval(ASSIGN_IDS, 2, *names, *customers)
        return dict(zip(customers, (int(i) for i in ids), strict=True))


def queue_facts(
    pipe: Any, tenant: str, shard: int, facts: list[tuple[int, Facts]], current: dict[str, bytes | None]
) -> None:
    """Queue the attribute changes of `facts` (id, facts) given the values held now (`current`,
    field "<id>|<attribute>" -> JSON [time, event id, value]): for each attribute the latest update
    by (time, event id) wins, whatever the order they come in; its customer's bit moves from the
    old value's bitmap to the new one's."""
    held: dict[str, tuple[int, str, str]] = {}
    for field, raw in current.items():
        if raw is not None:
            when, said, text = json.loads(raw)  # ids and values may hold any printable character
            held[field] = (int(when), str(said), str(text))
    changed: dict[str, tuple[int, str, str]] = {}
    for who, f in facts:
        for name, value in f.values:
            field = f"{who}|{name}"
            old = changed.get(field) or held.get(field)
            if old is not None and (old[0], old[1]) >= (f.time, f.event_id):
                continue
            changed[field] = (f.time, f.event_id, value or "")
    for field, (at, event_id, now) in changed.items():
        ident_text, name = field.split("|", 1)
        ident = int(ident_text)
        before = held.get(field)
        if before is not None and before[2] and before[2] != now:
            pipe.setbit(keys.attribute_key(tenant, shard, name, before[2]), ident, 0)
        if now:
            pipe.setbit(keys.attribute_key(tenant, shard, name, now), ident, 1)
            pipe.sadd(keys.attribute_values_key(tenant, shard, name), now)
        pipe.hset(keys.attribute_state_key(tenant, shard), field, json.dumps([at, event_id, now]))


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).date().isoformat()
