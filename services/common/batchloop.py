"""The consume loop every stream worker shares: batches from Kafka into an engine, positions
taken from the engine's applied-offset fence, outages waited out, poison isolated.

- On every assignment a partition is moved to its fence (the next offset whose effects are not
  in Redis), so where Kafka's committed offset differs, the state's own record wins.
- Kafka commits are the fence's values after a batch is applied: never ahead of the state.
- A batch that fails because Kafka or Redis is away is not applied at all (the engine writes
  each batch in one MULTI/EXEC); its partitions go back to the fence and the loop waits with
  backoff until the dependency answers again.
- A batch that fails for any other reason is applied again one message at a time; a message
  that fails alone is dead-lettered with its position (`engine.quarantine`), and the partition
  flows on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from services.common.fence import OffsetFence
from services.common.messages import Message
from services.common.resilience import OUTAGES, Backoff, Health, dependency_of, retry

__all__ = ["BatchEngine", "BatchLoop", "describe"]

log = logging.getLogger(__name__)


class BatchEngine(Protocol):
    lock: asyncio.Lock
    fence: OffsetFence
    behind: Collection[tuple[str, int]]  # as of the last batch; an idle clock moves only when empty

    async def process(self, messages: Sequence[Message], behind: Collection[tuple[str, int]] = ()) -> None: ...

    async def quarantine(self, msg: Message, reason: str) -> None: ...

    def reset(self) -> None: ...


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions are handed over only between batches; newly assigned ones are moved to their
    fence before their messages are used."""

    def __init__(self, loop: BatchLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.loop.engine.lock:
            if revoked:  # a shard that comes back may hold what its other owner left in the outbox
                self.loop.engine.reset()
        if revoked:
            log.info("%s: partitions revoked: %s", self.loop.health.service, describe(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.loop.unplaced.update(assigned)
        log.info("%s: partitions assigned: %s", self.loop.health.service, describe(assigned) or "none")


def describe(tps: Iterable[TopicPartition]) -> str:
    """Topic partitions in one short line: "crm.events.order[0-5,7] crm.events.cart[0-11]"."""
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    parts = []
    for topic, numbers in sorted(by_topic.items()):
        numbers.sort()
        runs: list[list[int]] = []
        for n in numbers:
            if runs and n == runs[-1][1] + 1:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        parts.append(f"{topic}[{','.join(str(a) if a == b else f'{a}-{b}' for a, b in runs)}]")
    return " ".join(parts)


class BatchLoop:
    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        engine: BatchEngine,
        topics: Sequence[str],
        health: Health,
        ready: Callable[[], Awaitable[None]],
        batch_max: int,
        within_seconds: float,
    ) -> None:
        """`consumer` (not started, auto-commit off) reads `topics` in batches of at most
        `batch_max` messages or `within_seconds`; `ready()` runs before the first batch."""
        self.consumer = consumer
        self.engine = engine
        self.topics = list(topics)
        self.health = health
        self.ready = ready
        self.batch_max = batch_max
        self.within_ms = int(within_seconds * 1000)
        self.unplaced: set[TopicPartition] = set()  # assigned, not yet moved to the fence
        self.read_to: dict[TopicPartition, int] = {}  # next offset to read, as far as batches went
        self.backoff = Backoff()

    async def run(self) -> None:
        """Consume until cancelled."""
        await retry(self._start, self.health)
        log.info("%s: consuming %s", self.health.service, ", ".join(self.topics))
        try:
            while True:
                await self.step()
        finally:
            await self.consumer.stop()
            log.info("%s: stopped consuming", self.health.service)

    async def _start(self) -> None:
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))
        await self.consumer.start()

    async def step(self) -> None:
        """One batch: fetch, place new partitions, apply, commit (or wait out an outage)."""
        batch = await self.consumer.getmany(timeout_ms=self.within_ms, max_records=self.batch_max)
        messages = [Message(m.topic, m.partition, m.offset, m.value, m.timestamp) for rs in batch.values() for m in rs]
        if self.unplaced:
            firsts = {tp: records[0].offset for tp, records in batch.items() if records}
            placed = set(self.unplaced)
            await retry(lambda: self._place(placed, firsts), self.health)
            messages = [m for m in messages if TopicPartition(m.topic, m.partition) not in placed]
        if not messages:
            self.engine.behind = self.behind()  # nothing came: what Kafka says now, for the idle clock
            return
        await retry(self.ready, self.health)
        for m in messages:
            self.read_to[TopicPartition(m.topic, m.partition)] = m.offset + 1
        try:
            await self.engine.process(messages, self.behind(messages))
        except OUTAGES as exc:
            await self._outage(exc, messages)
            return
        except Exception:
            log.exception("a batch of %d messages failed; applying them one at a time", len(messages))
            if not await self._isolate(messages):
                return
        self.backoff.reset()
        for dependency in list(self.health.down_since):
            self.health.up(dependency)
        await self._commit(messages)

    def behind(self, messages: Sequence[Message] = ()) -> set[tuple[str, int]]:
        """(topic, partition)s assigned here with messages not yet read, as far as Kafka said
        when this batch's messages were fetched: a partition whose high-water mark is older than
        the newest fetch behind `messages` (aiokafka does not re-fetch a partition while records
        of it wait in its buffer) counts as behind, since more may have come since."""
        poll = self.consumer.last_poll_timestamp
        fetched = {TopicPartition(m.topic, m.partition) for m in messages}
        newest = max((poll(tp) or 0 for tp in fetched), default=0)
        out = set()
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            done = max(self.read_to.get(tp, 0), self.engine.fence.applied.get(f"{tp.topic}:{tp.partition}", 0))
            if end is None or done < end or (poll(tp) or 0) < newest:
                out.add((tp.topic, tp.partition))
        return out

    async def _outage(self, exc: BaseException, messages: Sequence[Message]) -> None:
        self.health.down(dependency_of(exc), exc)
        self.engine.reset()
        await self.backoff.wait()
        tps = {TopicPartition(m.topic, m.partition) for m in messages}
        firsts: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            firsts[tp] = min(firsts.get(tp, m.offset), m.offset)
        await retry(lambda: self._place(tps, firsts), self.health)

    async def _isolate(self, messages: Sequence[Message]) -> bool:
        """Each message alone; one that fails alone is dead-lettered. False on an outage."""
        for msg in messages:
            try:
                await self.engine.process([msg], self.behind(messages))
            except OUTAGES as exc:
                await self._outage(exc, messages)  # back to the fence: what was applied is skipped
                return False
            except Exception as exc:  # noqa: BLE001 - any failure of one message is that message's
                log.error("message %s:%d@%d cannot be applied: %r", msg.topic, msg.partition, msg.offset, exc)
                try:
                    await self.engine.quarantine(msg, f"unprocessable: {type(exc).__name__}: {exc}"[:500])
                except OUTAGES as outage:
                    await self._outage(outage, messages)
                    return False
        return True

    async def _place(self, tps: set[TopicPartition], firsts: dict[TopicPartition, int]) -> None:
        """Move each of `tps` still assigned to its fence (or, without one, to the first offset
        fetched in this batch, which is dropped and read again)."""
        names = [f"{tp.topic}:{tp.partition}" for tp in tps]
        fences = await self.engine.fence.positions(names)
        assigned = self.consumer.assignment()
        fenced = fresh = 0
        for tp, name in zip(tps, names, strict=True):
            self.unplaced.discard(tp)
            if tp not in assigned:
                continue
            target = fences.get(name)
            if target is None:
                target = firsts.get(tp)
                fresh += 1
            else:
                fenced += 1
            if target is not None:
                self.consumer.seek(tp, target)
                self.read_to[tp] = target
        if fenced or fresh:
            log.info("%s: took over %d partitions: %d at their applied-offset fence, %d with none yet",
                     self.health.service, fenced + fresh, fenced, fresh)  # fmt: skip

    async def _commit(self, messages: Sequence[Message]) -> None:
        """Commit the fence of the batch's partitions (what Redis holds, never more)."""
        assigned = self.consumer.assignment()
        offsets = {}
        for tp in {TopicPartition(m.topic, m.partition) for m in messages}:
            applied = self.engine.fence.applied.get(f"{tp.topic}:{tp.partition}")
            if tp in assigned and applied is not None:
                offsets[tp] = applied
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance or an outage: the fence stays the truth
            log.info("commit skipped (%s); positions are kept in Redis", type(exc).__name__)
