"""The ingest path shared by the HTTP service and bulk file loads: validate, encode, produce.

Valid events go to their topic keyed by `customer_id`; every rejected item goes to the DLQ with
its reason. An item counts as accepted only once Kafka has acknowledged it (`acks=all`). When
Kafka does not acknowledge every record within the deadline, `NotAcknowledged` carries what
happened to each item, so a caller retries only the items that were not written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError

from services.common import produce
from services.common.avro import Codec
from services.common.constants import TOPIC_DLQ, event_topic
from services.common.deadletter import encode_dead_letter, printable
from services.common.errors import CrmError
from services.ingest.metrics import IngestMetrics
from services.ingest.validate import Limits, RawItem, Rejection, schema_name, validate_event

__all__ = [
    "ACCEPTED",
    "MAX_REQUEST_BYTES",
    "NOT_WRITTEN",
    "REJECTED",
    "UNKNOWN",
    "Ingestor",
    "ItemResult",
    "NotAcknowledged",
    "make_producer",
]

log = logging.getLogger(__name__)

ACCEPTED = "accepted"  # Kafka acknowledged the event
REJECTED = "rejected"  # refused by validation; the reason says why (the item is in the DLQ)
NOT_WRITTEN = "not_written"  # never acknowledged: Kafka failed it or it was never handed over; retry
UNKNOWN = "unknown"  # still unacknowledged at the deadline; a retry is safe, the engine dedupes by event_id

MAX_REQUEST_BYTES = 1024 * 1024  # the producer's max_request_size, aiokafka's default and Kafka's message limit


@dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    status: str
    event_id: str | None = None
    topic: str | None = None
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.topic is not None:
            out["topic"] = self.topic
        if self.reason is not None:
            out["reason"] = self.reason
        return out


class NotAcknowledged(CrmError, ConnectionError):
    """Kafka did not acknowledge every record in time; `results` says, per item, what happened."""

    def __init__(self, results: list[ItemResult], cause: str) -> None:
        self.results = results
        self.cause = cause
        super().__init__(f"event log did not acknowledge every record: {cause}")


def make_producer(bootstrap: str, ack_timeout_seconds: float = 10.0) -> AIOKafkaProducer:
    """Ingest's producer: records acknowledged (`acks=all`) or failed within `ack_timeout_seconds`
    (not idempotent, see `services.common.produce.make_producer`)."""
    return produce.make_producer(bootstrap, ack_timeout_seconds=ack_timeout_seconds, max_request_size=MAX_REQUEST_BYTES)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """One record to produce for an item, and the item's result once Kafka acknowledged it."""

    topic: str
    key: bytes | None
    value: bytes
    result: ItemResult
    event_type: str  # metric label; "unknown" when a rejected item named no valid type
    code: str = ""  # rejection code


class Ingestor:
    def __init__(
        self,
        codec: Codec,
        producer: AIOKafkaProducer | None,
        metrics: IngestMetrics,
        limits: Limits,
        clock: Callable[[], float] = time.time,
        ack_timeout: float | None = None,
    ) -> None:
        """`producer` None (not connected yet) leaves every item not written; `ack_timeout` bounds
        the wait for Kafka's acknowledgements (None: until the producer settles each record)."""
        self.codec = codec
        self.producer = producer
        self.metrics = metrics
        self.limits = limits
        self.clock = clock
        self.ack_timeout = ack_timeout

    async def ingest(self, items: Sequence[RawItem], source: str) -> list[ItemResult]:
        """Validate and produce `items`; one result per item, in order, once Kafka acknowledged
        every record. NotAcknowledged (with per-item results) when it did not."""
        now_ms = int(self.clock() * 1000)
        outgoing = [self._prepare(index, item, now_ms, source) for index, item in enumerate(items)]
        futures: list[asyncio.Future[Any] | None] = [None] * len(outgoing)
        cause = "not connected to Kafka"
        if self.producer is not None:
            cause = await self._produce(self.producer, outgoing, futures)
        results = [_settled(out.result, future) for out, future in zip(outgoing, futures, strict=True)]
        lost = 0
        for out, future in zip(outgoing, futures, strict=True):
            if out.result.status == REJECTED:
                self.metrics.rejected.labels(out.event_type, out.code).inc()
                lost += not _acknowledged(future)
            elif _acknowledged(future):
                self.metrics.accepted.labels(out.event_type).inc()
        if lost:
            self.metrics.dead_letters_lost.inc(lost)
            log.warning("%d dead letters of rejected items were not written (%s); the client got their reasons",
                        lost, cause or "not acknowledged")  # fmt: skip
        if cause or any(not _acknowledged(f) for f in futures):
            raise NotAcknowledged(results, cause or "a record was not acknowledged")
        return results

    async def _produce(
        self, producer: AIOKafkaProducer, outgoing: list[_Outgoing], futures: list[asyncio.Future[Any] | None]
    ) -> str:
        """Hand every record to the producer in order (so per-customer order is kept) and wait for
        the acknowledgements, within the deadline; what went wrong, or "" when nothing did."""
        try:
            async with asyncio.timeout(self.ack_timeout):
                for i, out in enumerate(outgoing):
                    futures[i] = await producer.send(out.topic, out.value, key=out.key)
                pending = [f for f in futures if f is not None]
                if pending:
                    await asyncio.wait(pending)
        except TimeoutError:
            return f"no acknowledgement within {self.ack_timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - send refused (no metadata, closed): the rest is not written
            return type(exc).__name__
        return ""

    def _prepare(self, index: int, item: RawItem, now_ms: int, source: str) -> _Outgoing:
        try:
            event_type, record = validate_event(item, self.codec, self.limits, now_ms)
            value = self._encode(schema_name(event_type), record, event_type)
        except Rejection as exc:
            topic = event_topic(exc.event_type) if exc.event_type else ""
            envelope = self._dead_letter(item.raw, topic, exc.reason, now_ms, source)
            result = ItemResult(index, REJECTED, _event_id(item), None, exc.reason)
            return _Outgoing(TOPIC_DLQ, None, envelope, result, exc.event_type or "unknown", exc.code)
        topic = event_topic(event_type)
        result = ItemResult(index, ACCEPTED, record["event_id"], topic)
        return _Outgoing(topic, record["customer_id"].encode(), value, result, event_type)

    def _encode(self, name: str, record: dict[str, Any], event_type: str) -> bytes:
        try:
            value = self.codec.encode(name, record)
        except Exception as exc:  # noqa: BLE001 - whatever the writer refuses is this item's problem alone
            raise Rejection("unencodable", str(exc)[:200], event_type) from exc
        if len(value) > self.limits.max_item_bytes:
            raise Rejection("too_large", f"encoded event is {len(value)} bytes", event_type)
        return value

    def _dead_letter(self, raw: bytes, topic: str, reason: str, now_ms: int, source: str) -> bytes:
        """The DLQ record of a rejected item, its original cut to `max_item_bytes`."""
        return encode_dead_letter(
            self.codec,
            original=raw,
            topic=topic,
            reason=reason,
            received_at=now_ms,
            source=source,
            keep=self.limits.max_item_bytes,
        )


def _acknowledged(future: asyncio.Future[Any] | None) -> bool:
    return future is not None and future.done() and not future.cancelled() and future.exception() is None


def _settled(result: ItemResult, future: asyncio.Future[Any] | None) -> ItemResult:
    """What to tell the client about an item: a rejection stands whatever happened to its dead
    letter; an event is accepted only when acknowledged."""
    if result.status == REJECTED or _acknowledged(future):
        return result
    status = NOT_WRITTEN
    if future is not None and (not future.done() or _timed_out(future)):
        status = UNKNOWN  # a request that timed out may have reached the broker
    return ItemResult(result.index, status, result.event_id, result.topic, result.reason)


def _timed_out(future: asyncio.Future[Any]) -> bool:
    if future.cancelled():
        return False
    exc = future.exception()
    return isinstance(exc, KafkaTimeoutError | RequestTimedOutError | TimeoutError)


def _event_id(item: RawItem) -> str | None:
    if isinstance(item.value, dict) and isinstance(item.value.get("event_id"), str):
        return printable(str(item.value["event_id"])[:256])
    return None
