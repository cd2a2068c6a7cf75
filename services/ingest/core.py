"""The ingest path shared by the HTTP service and bulk file loads: validate, encode, produce.

Valid events go to their topic keyed by `customer_id`; every rejected item goes to the DLQ with
its reason. Nothing is acknowledged before Kafka has acknowledged it (`acks=all`, idempotent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from services.common.avro import Codec
from services.common.constants import TOPIC_DLQ, event_topic
from services.ingest.metrics import IngestMetrics
from services.ingest.validate import Limits, RawItem, Rejection, schema_name, validate_event

__all__ = ["Ingestor", "ItemResult", "make_producer"]


@dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    accepted: bool
    event_id: str | None = None
    topic: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": "accepted" if self.accepted else "rejected"}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.topic is not None:
            out["topic"] = self.topic
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def make_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30000,
    )


class Ingestor:
    def __init__(
        self,
        codec: Codec,
        producer: AIOKafkaProducer,
        metrics: IngestMetrics,
        limits: Limits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.codec = codec
        self.producer = producer
        self.metrics = metrics
        self.limits = limits
        self.clock = clock

    async def ingest(self, items: Sequence[RawItem], source: str) -> list[ItemResult]:
        """Validate and produce `items`; returns one result per item, in order."""
        now_ms = int(self.clock() * 1000)
        results: list[ItemResult] = []
        pending = []  # delivery futures; sends are awaited in order so per-customer order is kept
        accepted_types: list[str] = []
        rejected: list[tuple[str, str]] = []
        for index, item in enumerate(items):
            try:
                event_type, record = validate_event(item, self.codec, self.limits, now_ms)
                value = self.codec.encode(schema_name(event_type), record)
            except Rejection as exc:
                topic = event_topic(exc.event_type) if exc.event_type else ""
                pending.append(await self._dead_letter(item.raw, topic, exc.reason, now_ms, source))
                results.append(ItemResult(index, False, _event_id(item), None, exc.reason))
                rejected.append((exc.event_type or "unknown", exc.code))
                continue
            topic = event_topic(event_type)
            pending.append(await self.producer.send(topic, value, key=record["customer_id"].encode()))
            results.append(ItemResult(index, True, record["event_id"], topic))
            accepted_types.append(event_type)
        await asyncio.gather(*pending)  # Kafka acknowledged every record (acks=all)
        for event_type in accepted_types:
            self.metrics.accepted.labels(event_type).inc()
        for event_type, code in rejected:
            self.metrics.rejected.labels(event_type, code).inc()
        return results

    def _dead_letter(self, raw: bytes, topic: str, reason: str, now_ms: int, source: str) -> Any:
        envelope = {"original": raw, "topic": topic, "reason": reason, "received_at": now_ms, "source": source}
        return self.producer.send(TOPIC_DLQ, self.codec.encode("crm.events.DeadLetter", envelope))


def _event_id(item: RawItem) -> str | None:
    if isinstance(item.value, dict) and isinstance(item.value.get("event_id"), str):
        return str(item.value["event_id"])[:256]
    return None
