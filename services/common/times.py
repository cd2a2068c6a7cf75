"""Epoch milliseconds, the one time unit of the contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["epoch_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: Any) -> int:
    """Epoch milliseconds of an int or of a (timezone-aware) datetime, exact (no float rounding),
    as fastavro decodes a `timestamp-millis`."""
    if type(value) is int:
        return value
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MS
    raise TypeError(f"expected epoch milliseconds or a datetime, got {type(value).__name__}")
