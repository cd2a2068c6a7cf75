"""Recognising a repeated event: fingerprints of a customer's recent events, kept by event time.

A repeat carries the same event id and the same event time, so (time, 32-bit hash of the id)
identifies it. Fingerprints are kept while their time is within `horizon` of the customer's
clock (the allowed lateness plus a margin) and at most `limit` of them; a repeat older than that
is late beyond the lateness bound (counted by the `crm_stager_late_events_total` metric).
Kafka redelivery after a crash is caught before this, by the applied-offset fence.
"""

from __future__ import annotations

import zlib

__all__ = ["fingerprint", "is_repeat", "remember"]


def fingerprint(event_id: str) -> int:
    return zlib.crc32(event_id.encode())


def is_repeat(seen: list[tuple[int, int]], time: int, fp: int) -> bool:
    return (time, fp) in seen


def remember(
    seen: list[tuple[int, int]], time: int, fp: int, clock: int, horizon: int, limit: int
) -> list[tuple[int, int]]:
    """`seen` with (time, fp) added and everything older than `clock - horizon` dropped, newest first."""
    kept = [item for item in seen if clock - item[0] < horizon]
    kept.append((time, fp))
    kept.sort(reverse=True)
    return kept[:limit]
