"""The skeleton every stream service runs on: a service supplies its rules, the base the loop.

A batch of Kafka messages goes through these steps, the same for every service:

1. **decode**: each message is decoded with the schema its topic carries; what cannot be decoded,
   a null value or a record of another schema is dead-lettered with its topic, partition and
   offset, and the partition flows on; the service maps a record to its input (`to_input`);
2. **units**: a record belongs to a unit, its tenant's shard (partition), whose keys share one
   Redis hash tag; records below the unit's applied-offset fence or the shard's floor were
   applied before (a redelivery after a crash or a rebalance) and are skipped;
3. **clocks**: each tenant's event clock notes the input's time per partition (shard); the
   watermark of a shard passes a time only once every input topic feeding it has, and never runs
   further than the allowed lateness behind the newest input;
4. **apply** (the service), per unit: per customer, inputs and the timers due before them in one
   event-time order, up to the shard's watermark; everything the unit's batch changes is written
   in one MULTI/EXEC together with the loop's own writes (`queue_loop_writes`: the unit's clock,
   its dead letters into its outbox, its new fence); once every unit of the batch is written,
   each shard's floor moves past the batch (with the dead letters of records without a unit);
5. **outbox**: dead letters (and whatever the service put in the outbox) are sent after the MULTI
   and cleared; a worker taking a shard over sends what a crash left there, once.

`tick` runs between batches: idle clocks move on (no input for a while: nothing older can
still come in order), and every customer whose timer is due at or before its shard's watermark
is handed to the service's `fire`. A batch that fails on Kafka or Redis changes nothing (the
batch loop waits and reads again from the fence); one that fails on its data is applied again
one message at a time and the message failing alone is dead-lettered (`quarantine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.common import keys
from services.common.avro import Codec
from services.common.clock import EventClock, ShardClock, merge_shard_clocks, shard_value
from services.common.constants import TOPICS, checked_tenant, checked_time
from services.common.deadletter import dead_letter, quarantine
from services.common.fence import FLOOR, OffsetFence, Unit
from services.common.messages import Message
from services.common.metrics import LoopMetrics
from services.common.outbox import Outbox, SentSince
from services.common.produce import SendTo
from services.common.redisbatch import HGET_MANY, HSET_MANY
from services.common.times import epoch_ms
from services.common.units import Units, read_clocks

__all__ = ["Batch", "DeadLetters", "Group", "LoopSettings", "StreamEngine", "Timed", "WritePlan"]

log = logging.getLogger(__name__)

# outbox entries per shard: id -> packed entry
DeadLetters = dict[int, dict[str, bytes]]
# The schema each input topic carries: a record of another schema is dead-lettered.
TOPIC_SCHEMAS = {spec.name: spec.schemas for spec in TOPICS}


class Timed(Protocol):
    """What the base needs of a service's input: its event time and where it was read."""

    @property
    def time(self) -> int: ...

    @property
    def origin(self) -> str: ...


In = TypeVar("In", bound=Timed)
T = TypeVar("T")


class LoopSettings(Protocol):
    """The settings the loop reads (every stream service's settings have them)."""

    @property
    def kafka_bootstrap(self) -> str: ...

    @property
    def lateness_ms(self) -> int: ...

    @property
    def idle_flush_seconds(self) -> float: ...

    @property
    def wall_clock_advance(self) -> bool: ...

    @property
    def outbox_grace_seconds(self) -> float: ...


@dataclass(slots=True)
class Group(Generic[In]):
    """One customer's new inputs of a batch, in the order read."""

    shard: int
    items: list[In] = field(default_factory=list)
    arrived: int = 0  # Kafka timestamp (ms) of the newest of them


@dataclass(slots=True)
class Batch(Generic[In]):
    """What a batch brings to one unit (`tenant`, `shard`): the fence's new offsets, the inputs by
    (tenant, customer), and its dead letters (added while applying)."""

    tenant: str = ""
    shard: int = -1
    offsets: dict[str, int] = field(default_factory=dict)
    groups: dict[tuple[str, str], Group[In]] = field(default_factory=dict)
    dead: DeadLetters = field(default_factory=dict)
    # origin -> the Kafka timestamp (ms) of its message: for an event, when ingest handed it to Kafka
    stamps: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class WritePlan:
    """What a batch writes of its customers: their states (one Redis hash field each, all in
    one script call), the changes of the timer sets, and records for the outbox."""

    states: list[str] = field(default_factory=list)  # keys of the states, with `blobs` in order
    blobs: list[bytes] = field(default_factory=list)
    timers_set: dict[str, dict[str, int]] = field(default_factory=dict)  # timer set -> customer -> due
    timers_del: dict[str, list[str]] = field(default_factory=dict)  # timer set -> customers with none due
    outbox: DeadLetters = field(default_factory=dict)  # shard -> id -> packed record

    def state(self, key: str, blob: bytes) -> None:
        self.states.append(key)
        self.blobs.append(blob)

    def timer(self, timers: str, customer: str, due: int | None) -> None:
        """`customer`'s next due time in the timer set `timers` (None: nothing due)."""
        if due is None:
            self.timers_del.setdefault(timers, []).append(customer)
        else:
            self.timers_set.setdefault(timers, {})[customer] = due

    def queue(self, pipe: Any) -> None:
        """Queue the states and timer changes on `pipe` (in its MULTI); the outbox entries are
        queued by the engine's `Outbox`."""
        if self.states:
            # EVAL, not EVALSHA: a script missing from the cache must not fail half a MULTI
            pipe.eval(HSET_MANY, len(self.states), *self.states, *self.blobs)
        for key, members in self.timers_set.items():
            pipe.zadd(key, members)
        for key, gone in self.timers_del.items():
            pipe.zrem(key, *gone)


class StreamEngine(Generic[In]):
    """The loop of a stream service. A service subclasses it and supplies:

    - `to_input(schema, record, origin)`: its input of a decoded record (None: not read);
    - `apply(batch)`: decide on the inputs of a unit's batch and write everything in one MULTI
      that also carries `queue_loop_writes(pipe, (batch.tenant, batch.shard), batch.offsets,
      batch.dead)`; every key it touches carries the unit's hash tag (`keys.unit_tag`);
    - `fire(tenant, shard, watermark, customers, dead)`: the same for customers whose timers
      are due (no offsets);
    - optionally `control` (records that are not inputs), `new_clock`, `on_start` and
      `after_tick`.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        codec: Codec,
        settings: LoopSettings,
        metrics: LoopMetrics,
        group: str,
        source: str,
        send: Callable[[str, bytes, bytes], Any],
        sent_since: SentSince,
        clock: str,
        timers_key: Callable[[str, int], str],
        shards: Callable[[], Iterable[int]],
        fields: dict[str, tuple[str, ...]] | None = None,
        on_recovered: Callable[[int, int], None] | None = None,
        follow_upstream: bool = False,
        follow_source: str = "",
        progress_topic: str | None = None,
        send_to: SendTo | None = None,
    ) -> None:
        """`redis` answers bytes (decode_responses=False); `codec` decodes the input topics
        (only `fields` of the schemas named there); `group` names the applied-offset fence;
        `source` signs dead letters; `send(topic, key, value)` produces what the outbox holds and
        `sent_since` finds what a crash left already sent; `clock` names the service's clocks
        (`keys.clock_key`) and `timers_key(tenant, shard)` (a sorted set of customers by due time)
        its timers; outboxes are `keys.outbox_key(group, tenant, shard)`; `shards()` are
        the partitions this worker owns now. With `follow_upstream`, a shard's time never passes
        what the service upstream declared complete on it (its `crm.stage.Progress` records, those
        whose `source` starts with `follow_source` when several services declare theirs);
        with `progress_topic` and `send_to(topic, partition, value)`, this service declares its
        own the same way after every tick."""
        self.redis: Any = redis  # redis-py's annotations do not know the bytes/str mode
        self.codec = codec
        self.read = codec.reader(fields or {})
        self.settings = settings
        self.metrics = metrics
        self.source = source
        self.send = send
        self.clock = clock
        self.group = group
        self.registry = Units(redis)
        self.timers_key = timers_key
        self.shards = shards
        self.lock = asyncio.Lock()
        self.fence = OffsetFence(redis, group)
        self._names: dict[tuple[str, int], str] = {}
        self.clocks: dict[str, EventClock] = {}
        self.behind: Collection[tuple[str, int]] = ()  # as of the last batch
        self.values: dict[str, bytes] = {}  # origin -> bytes of this batch's messages (for dead letters)
        self.follow_upstream = follow_upstream
        self.follow_source = follow_source
        self.progress_topic = progress_topic
        self.send_to = send_to
        self.marked: dict[tuple[str, int], int] = {}  # (tenant, shard) -> the last progress declared
        self.stale_clocks = False  # take the clocks again from Redis before the next batch or tick
        # dead letters (and the service's own records) go out through an outbox written with the
        # fence: once, even across crashes
        self.outbox = Outbox(
            redis=redis,
            key=lambda tenant, shard: keys.outbox_key(group, tenant, shard),
            send=send,
            sent_since=sent_since,
            grace_seconds=settings.outbox_grace_seconds,
            on_recovered=on_recovered or (lambda already, now: None),
        )

    # --- what a service supplies ---------------------------------------------------------------
    def to_input(self, schema: str, record: dict[str, Any], origin: str) -> tuple[str, str, In] | None:
        """(tenant, customer, input) of a decoded record; None for records the service does not
        read. Raise ValueError for a record the service cannot take (it is dead-lettered)."""
        raise NotImplementedError

    def control(self, shard: int, schema: str, record: dict[str, Any]) -> str | None:
        """Take a record that is not an input: its tenant if taken, None if not. An upstream
        service's progress moves the shard's ceiling (when following it). ValueError for one it
        cannot take (a tenant or a time no state can hold): it is dead-lettered like an input."""
        if schema != "crm.stage.Progress":
            return None
        tenant, watermark = checked_tenant(record["tenant"]), checked_time(epoch_ms(record["watermark"]))
        if self.follow_upstream and str(record.get("source", "")).startswith(self.follow_source):
            clock = self.clocks.get(tenant)
            if clock is None:
                clock = self.clocks[tenant] = self.new_clock()
            clock.ceil(shard, watermark)
        return tenant

    async def apply(self, batch: Batch[In]) -> None:
        raise NotImplementedError

    async def fire(self, tenant: str, shard: int, watermark: int, customers: list[str], dead: DeadLetters) -> None:
        raise NotImplementedError

    def new_clock(self) -> EventClock:
        return EventClock(ceilings={} if self.follow_upstream else None)

    async def on_start(self) -> None:
        """Checks before the first batch (the fence and the clocks are loaded by then)."""

    async def after_tick(self, owned: set[int]) -> None:
        """After the timers of a tick fired (the clocks are written next)."""

    # --- the loop ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the applied-offset fence and the event clocks written by earlier runs."""
        await self.fence.load()
        merge_shard_clocks(self.clocks, await read_clocks(self.redis, self.clock), None, self.new_clock)
        await self.on_start()
        log.info("%s: started with the applied offsets of %d partitions and the clocks of %d tenants",
                 self.source, len(self.fence.applied), len(self.clocks))  # fmt: skip

    def reset(self) -> None:
        """After an outage or a rebalance: check every outbox again (a send may have failed after a
        MULTI, or a shard's other owner may have left entries when it stopped), and take the
        fence and the clocks again from Redis before going on: the clocks were written with the
        fence, while the ones in memory may have moved on records that will be read again (Redis
        may even have lost its last writes), and time must not pass what the fence says was
        applied."""
        self.outbox.recovered.clear()
        self.stale_clocks = True

    async def _fresh_clocks(self) -> None:
        if self.stale_clocks:
            await self.fence.load()  # the applied offsets too: what Redis holds is the truth
            self.clocks.clear()
            merge_shard_clocks(self.clocks, await read_clocks(self.redis, self.clock), None, self.new_clock)
            self.stale_clocks = False

    async def quarantine(self, msg: Message, reason: str) -> None:
        """Dead-letter `msg` and move the fence past it, in one MULTI (a message that cannot be
        applied even alone)."""
        async with self.lock:
            parts = (self.redis, self.fence, self.outbox, self.codec, self.source)
            if await quarantine(*parts, msg=msg, reason=reason):
                self.metrics.invalid.inc()

    async def process(self, messages: Sequence[Message], behind: Collection[tuple[str, int]] = ()) -> None:
        """Apply a batch; `behind`: the (topic, partition)s with messages not yet read, which hold
        their shards' watermarks back."""
        async with self.lock:
            started = time.perf_counter()
            await self._fresh_clocks()
            self.behind = behind
            self.values = {}
            decoded = self._decode(messages)
            units = {(t, m.partition) for m, _, _, t in decoded if t is not None}
            units |= {(FLOOR, m.partition) for m in messages}
            await self.registry.add(units)
            await self.fence.refresh(units)
            await self.outbox.recover(units)
            batches, floors = self._collect(decoded)
            for tenant, clock in self.clocks.items():
                clock.settle(self.settings.lateness_ms, behind)
                self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
            await _each([self._apply(batch) for batch in batches.values()])
            await self._floors(floors)  # every unit of the batch is written: the floors move
            self.metrics.batch.observe(time.perf_counter() - started)

    async def _floors(self, floors: dict[int, Batch[In]]) -> None:
        """Move each shard's floor past the batch (never back: a batch read again from below the
        floor leaves it where it is): all in one round trip, except a shard with dead letters of
        records naming no tenant, whose floor moves in one MULTI with them."""
        plain: list[tuple[Unit, dict[str, int]]] = []
        for shard, floor in floors.items():
            unit = (FLOOR, shard)
            floor.offsets = {tp: n for tp, n in floor.offsets.items() if n > self.fence.applied.get(tp, 0)}
            if floor.dead:
                async with self.redis.pipeline(transaction=True) as pipe:
                    self.outbox.queue(pipe, FLOOR, floor.dead)
                    self.fence.queue(pipe, unit, floor.offsets)
                    await pipe.execute()
                self.fence.written(unit, floor.offsets)
                self.metrics.invalid.inc(sum(len(d) for d in floor.dead.values()))
                await self.outbox.send(FLOOR, floor.dead)
            elif floor.offsets:
                plain.append((unit, floor.offsets))
        if plain:
            async with self.redis.pipeline(transaction=False) as pipe:
                for unit, offsets in plain:
                    self.fence.queue(pipe, unit, offsets)
                await pipe.execute()
            for unit, offsets in plain:
                self.fence.written(unit, offsets)

    async def _apply(self, batch: Batch[In]) -> None:
        await self.apply(batch)
        self.fence.written((batch.tenant, batch.shard), batch.offsets)
        self.metrics.invalid.inc(sum(len(d) for d in batch.dead.values()))
        await self.outbox.send(batch.tenant, batch.dead)

    def _decode(self, messages: Sequence[Message]) -> list[tuple[Message, str, Any, str | None]]:
        """Each message with its schema and record (or "" and the reason it cannot be read), and
        the tenant it names (None: none)."""
        out: list[tuple[Message, str, Any, str | None]] = []
        read = self.read
        for msg in messages:
            try:
                if msg.value is None:
                    raise ValueError("null value")
                schema, record = read(msg.value)
                expected = TOPIC_SCHEMAS.get(msg.topic)
                if expected is not None and schema not in expected:
                    raise ValueError(f"wrong schema: {schema} on {msg.topic} (which carries {', '.join(expected)})")
            except Exception as exc:  # noqa: BLE001 - whatever the input, the partition flows on
                out.append((msg, "", f"undecodable: {type(exc).__name__}: {exc}", None))
                continue
            tenant = record.get("tenant")
            out.append((msg, schema, record, tenant if isinstance(tenant, str) and tenant else None))
        return out

    def _collect(
        self, decoded: list[tuple[Message, str, Any, str | None]]
    ) -> tuple[dict[Unit, Batch[In]], dict[int, Batch[In]]]:
        """The batch of each unit with records not yet applied to it, and per shard the floor's
        new offsets with the dead letters of records that belong to no unit."""
        batches: dict[Unit, Batch[In]] = {}
        floors: dict[int, Batch[In]] = {}
        now = time.monotonic()
        done = self.fence.done
        redelivered = 0
        for msg, schema, record, named in decoded:
            shard = msg.partition
            tp = self.fence_name(msg)
            floor = floors.get(shard)
            if floor is None:
                floor = floors[shard] = Batch(FLOOR, shard)
            floor.offsets[tp] = max(floor.offsets.get(tp, 0), msg.offset + 1)
            # a record naming a tenant is its unit's, dead letter or not; one naming none the floor's
            unit = (named or FLOOR, shard)
            if done(unit, tp, msg.offset):
                redelivered += 1
                continue
            batch = floor if named is None else batches.get(unit)
            if batch is None:
                batch = batches[unit] = Batch(named or FLOOR, shard)
            if named is not None:
                batch.offsets[tp] = msg.offset + 1
            if not schema:
                self._dead(batch, msg, record)
            else:
                self._take_record(batch, msg, schema, record, now)
        self.metrics.redelivered.inc(redelivered)
        return batches, floors

    def _take_record(self, batch: Batch[In], msg: Message, schema: str, record: dict[str, Any], now: float) -> None:
        """Take a decoded record into its unit's `batch`: a control record, an input, nothing (a
        record the service does not read) or a dead letter."""
        shard = msg.partition
        origin = f"{msg.topic}|{shard}|{msg.offset}"
        try:
            if self.control(shard, schema, record) is not None:
                return
            mapped = self.to_input(schema, record, origin)
            self.values[origin] = msg.value or b""
        except Exception as exc:  # noqa: BLE001 - whatever the input, the partition flows on
            self._dead(batch, msg, f"invalid: {exc}")
            return
        if mapped is None:
            return
        tenant, customer, item = mapped
        if tenant != batch.tenant:  # (a record's tenant is the one it names)
            self._dead(batch, msg, f"invalid: tenant {tenant!r} is not the record's")
            return
        clock = self.clocks.get(tenant)
        if clock is None:
            clock = self.clocks[tenant] = self.new_clock()
        clock.saw(shard, item.time, now, msg.topic)
        batch.stamps[origin] = msg.timestamp
        found = batch.groups.get((tenant, customer))
        if found is None:
            batch.groups[(tenant, customer)] = Group(shard, [item], msg.timestamp)
        else:
            found.items.append(item)
            found.arrived = max(found.arrived, msg.timestamp)

    def _dead(self, batch: Batch[In], msg: Message, reason: str) -> None:
        ident, entry = dead_letter(self.codec, self.source, msg, reason)
        batch.dead.setdefault(msg.partition, {})[ident] = entry

    def fence_name(self, msg: Message) -> str:
        where = (msg.topic, msg.partition)
        name = self._names.get(where)
        if name is None:
            name = self._names[where] = f"{msg.topic}:{msg.partition}"
        return name

    def watermark(self, tenant: str, shard: int) -> int:
        """The event time up to which `shard` of `tenant` is complete."""
        return self.clocks[tenant].shard(shard).watermark

    def reject(self, shard: int, rejected: Iterable[tuple[Timed, str]], dead: DeadLetters) -> None:
        """Dead letters of inputs the rules could not apply, with where each was read."""
        for item, reason in rejected:
            topic, partition, offset = item.origin.rsplit("|", 2) if item.origin else ("", "-1", "-1")
            msg = Message(topic, int(partition), int(offset), self.values.get(item.origin, b""))
            ident, entry = dead_letter(self.codec, self.source, msg, reason)
            dead.setdefault(shard, {})[ident] = entry

    async def transact(self, names: list[str], build: Callable[[list[bytes | None], Any], T]) -> T:
        """Read field `s` of the hashes `names` (customer states) WATCHed, let `build(values,
        pipe)` decide and queue its writes on `pipe` (already in MULTI), and EXEC. If another
        worker (holding a partition briefly during a rebalance) wrote one of them in between,
        nothing is written and `build` runs again on the new values: no customer is decided twice."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    values: list[bytes | None] = []
                    if names:
                        await pipe.watch(*names)
                        values = list(await pipe.eval(HGET_MANY, len(names), *names))
                    pipe.multi()
                    result = build(values, pipe)
                    await pipe.execute()
                    return result
                except WatchError:
                    self.metrics.conflicts.inc()

    def queue_loop_writes(self, pipe: Any, unit: Unit, offsets: dict[str, int], dead: DeadLetters) -> None:
        """The loop's part of a unit's MULTI: its clock, its dead letters, its new fence."""
        tenant, shard = unit
        clock = self.clocks.get(tenant)
        if clock is not None and (shard in clock.shards or shard in (clock.ceilings or ())):
            pipe.set(keys.clock_key(self.clock, tenant, shard), self._clock_value(clock, shard))
        self.outbox.queue(pipe, tenant, dead)
        self.fence.queue(pipe, unit, offsets)

    @staticmethod
    def _clock_value(clock: EventClock, shard: int) -> str:
        ceiling = None if clock.ceilings is None else clock.ceilings.get(shard, 0)
        return shard_value(clock.shards.get(shard) or ShardClock(), ceiling)

    async def write_clocks(self, owned: set[int]) -> None:
        """The clock of every unit of the shards in `owned` (a shard another worker now owns is
        that worker's to write)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant, clock in self.clocks.items():
                for shard in set(clock.shards) | set(clock.ceilings or ()):  # a ceiling declared before any input too
                    if shard in owned:
                        pipe.set(keys.clock_key(self.clock, tenant, shard), self._clock_value(clock, shard))
            await pipe.execute()

    # --- timers ------------------------------------------------------------------------------
    async def tick(self) -> int:
        """Move idle clocks forward and fire every timer due at or before its shard's watermark;
        the number of customers whose timers fired."""
        now = time.monotonic()
        fired = 0
        async with self.lock:
            await self._fresh_clocks()
            owned = set(self.shards())
            units = await self.registry.load()
            await self.outbox.recover([(t, s) for t, s in units if s in owned])
            merge_shard_clocks(self.clocks, await read_clocks(self.redis, self.clock, units), owned, self.new_clock)
            wall = self.settings.lateness_ms if self.settings.wall_clock_advance else None
            for tenant, clock in self.clocks.items():
                # No new input for a while: nothing older can still be on its way in order.
                before = clock.watermark
                clock.flush_idle(owned, now, self.settings.idle_flush_seconds, wall, caught_up=not self.behind)
                if clock.watermark > before and wall is None:  # (a wall-clock advance moves it every tick)
                    log.info("%s: no input for %gs: watermark of tenant %s moved on to %s", self.source,
                             self.settings.idle_flush_seconds, tenant, _iso(clock.watermark))  # fmt: skip
                self.metrics.watermark.labels(tenant).set(clock.watermark / 1000)
                for shard in owned:
                    if shard in clock.shards:
                        fired += await self._fire(tenant, shard, clock.shards[shard].watermark)
            await self.after_tick(owned)
            await self._progress(owned)
            if self.clocks:
                await self.write_clocks(owned)
        return fired

    async def _progress(self, owned: set[int]) -> None:
        """After the timers: for each owned shard whose watermark moved, a progress record on its
        partition of the progress topic, behind every record this service wrote up to that time."""
        if self.send_to is None or self.progress_topic is None:
            return
        pending, written = [], {}
        for tenant, clock in self.clocks.items():
            for shard in owned:
                state = clock.shards.get(shard)
                if state is None or state.watermark <= self.marked.get((tenant, shard), 0):
                    continue
                record = {"tenant": tenant, "partition": shard, "watermark": state.watermark, "source": self.source}
                value = self.codec.encode("crm.stage.Progress", record)
                pending.append(await self.send_to(self.progress_topic, shard, value))
                written[(tenant, shard)] = state.watermark
        if pending:
            await asyncio.gather(*pending)
            self.marked.update(written)

    async def _fire(self, tenant: str, shard: int, watermark: int) -> int:
        """Every customer of `shard` with a timer due at or before `watermark`, 500 at a time."""
        fired = 0
        while True:
            due = await self.redis.zrangebyscore(self.timers_key(tenant, shard), "-inf", watermark, 0, 500)
            if not due:
                return fired
            dead: DeadLetters = {}
            await self.fire(tenant, shard, watermark, [c.decode() for c in due], dead)
            self.metrics.invalid.inc(sum(len(d) for d in dead.values()))
            await self.outbox.send(tenant, dead)
            fired += len(due)
            self.metrics.timers_fired.inc(len(due))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _each(coros: list[Any], at_once: int = 16) -> None:
    """Run `coros`, at most `at_once` together (each holds a Redis connection while it runs); if
    one fails, the others still finish (each one's MULTI and outbox send belong together), then the
    first failure is raised (what a unit wrote stays: its fence says so)."""
    if len(coros) == 1:
        await coros[0]
        return
    gate = asyncio.Semaphore(at_once)

    async def gated(coro: Any) -> None:
        async with gate:
            await coro

    outcomes = await asyncio.gather(*(gated(c) for c in coros), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
