"""Epoch milliseconds, the one time unit of the contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["checked_zone", "epoch_ms", "iso", "parse_instant"]

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


def parse_instant(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 instant with a zone (`1997-10-01T00:00:00Z`), a date
    (`1997-10-01`: its start, UTC) or a number of epoch milliseconds; ValueError saying which
    forms are accepted otherwise."""
    text = text.strip()
    if text.isascii() and text.isdigit():  # not other scripts' digits
        if len(text) > 15:
            raise ValueError(f"{text[:20]}... is not an instant: too many digits for epoch ms")
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an instant: give 1997-10-01T00:00:00Z, 1997-10-01 or epoch ms") from None
    if parsed.tzinfo is None:
        if len(text) != 10:  # a bare date is UTC; a time needs its zone
            raise ValueError(f"{text!r} needs a time zone (e.g. Z or +08:00)")
        parsed = parsed.replace(tzinfo=UTC)
    return epoch_ms(parsed)


def iso(ms: int) -> str:
    """`ms` as an ISO 8601 instant in UTC (`...Z`)."""
    moment = _EPOCH + ms * _MS
    return moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


def checked_zone(name: str) -> str:
    """`name` if it is an IANA time zone this machine knows; ValueError naming it otherwise (a
    folder such as "Asia" is no zone either)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name
