"""A Kafka message as the engines see it, whichever consumer read it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Message"]


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp: int = 0  # ms, as Kafka stamped it (0 when unknown)
