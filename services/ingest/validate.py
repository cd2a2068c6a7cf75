"""Pure validation: raw input item -> (event type, Avro record), or a Rejection with a reason.

The rules derive from `schemas/*.avsc`: required fields are those without a default, types and
enum symbols come from the schema. On top: string length limits and an event-time window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.avro import Codec
from services.common.constants import EVENT_TYPES
from services.common.errors import CrmError

__all__ = ["Limits", "RawItem", "Rejection", "split_body", "validate_event"]

_MISSING = object()


class Rejection(CrmError, ValueError):
    """An input item that cannot be accepted; `code` is a small fixed vocabulary (metric label)."""

    def __init__(self, code: str, detail: str = "", event_type: str = "") -> None:
        self.code = code
        self.detail = detail
        self.event_type = event_type
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


@dataclass(frozen=True, slots=True)
class Limits:
    max_string_length: int = 256
    max_array_items: int = 500
    max_future_skew_ms: int = 5 * 60 * 1000
    min_event_time_ms: int = 631152000000  # 1990-01-01: replays of old history stay accepted


@dataclass(frozen=True, slots=True)
class RawItem:
    """One input item: its original bytes and, when they parsed, the JSON value."""

    raw: bytes
    value: Any = None
    parse_error: str | None = None


def split_body(body: bytes) -> list[RawItem]:
    """A JSON array, a single JSON object, or NDJSON (one JSON value per line) -> items.

    A line that is not JSON becomes an item with `parse_error`, so it is rejected alone.
    """
    text = body.strip()
    if not text:
        return []
    try:
        whole = json.loads(text)
    except ValueError:
        return list(_ndjson(body))
    if isinstance(whole, list):
        return [RawItem(json.dumps(v, separators=(",", ":")).encode(), v) for v in whole]
    return [RawItem(bytes(text), whole)]


def _ndjson(body: bytes) -> Iterator[RawItem]:
    for line in body.splitlines():  # each item keeps its bytes as received, minus the line break
        if not line.strip():
            continue
        try:
            yield RawItem(line, json.loads(line))
        except ValueError as exc:
            yield RawItem(line, None, f"{exc}")


def _millis(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise Rejection("wrong_type", f"{path} must be epoch millis or an ISO 8601 time")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Rejection("wrong_type", f"{path} is not an ISO 8601 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise Rejection("wrong_type", f"{path} needs a time zone (e.g. Z)")
        return int(parsed.timestamp() * 1000)
    raise Rejection("wrong_type", f"{path} must be epoch millis or an ISO 8601 time")


def _check(schema: Any, value: Any, path: str, limits: Limits) -> Any:
    """Value converted to what the Avro writer takes, or Rejection."""
    if isinstance(schema, list):  # union: only ["null", T] is used in the contract
        if value is None and "null" in schema:
            return None
        return _check(next(s for s in schema if s != "null"), value, path, limits)
    if isinstance(schema, Mapping):
        return _check_complex(schema, value, path, limits)
    check = _PRIMITIVES.get(schema)
    if check is None:
        raise Rejection("wrong_type", f"{path}: unsupported schema type {schema!r}")
    return check(schema, value, path, limits)


def _check_complex(schema: Mapping[str, Any], value: Any, path: str, limits: Limits) -> Any:
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        return _millis(value, path)
    if kind == "enum":
        if not isinstance(value, str) or value not in schema["symbols"]:
            raise Rejection("bad_enum", f"{path} must be one of {', '.join(schema['symbols'])}")
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise Rejection("wrong_type", f"{path} must be an array")
        if len(value) > limits.max_array_items:
            raise Rejection("too_long", f"{path} has more than {limits.max_array_items} items")
        return [_check(schema["items"], v, f"{path}[{i}]", limits) for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise Rejection("wrong_type", f"{path} must be an object")
        return {str(k): _check(schema["values"], v, f"{path}.{k}", limits) for k, v in value.items()}
    if kind == "record":
        return _record(schema, value, path, limits)
    return _check(kind, value, path, limits)


def _string(_: str, value: Any, path: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise Rejection("wrong_type", f"{path} must be a string")
    if len(value) > limits.max_string_length:
        raise Rejection("too_long", f"{path} is longer than {limits.max_string_length} characters")
    return value


def _integer(kind: str, value: Any, path: str, _: Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejection("wrong_type", f"{path} must be an integer")
    bound = 2**31 if kind == "int" else 2**63
    if not -bound <= value < bound:
        raise Rejection("wrong_type", f"{path} is out of range for {kind}")
    return value


def _number(_: str, value: Any, path: str, __: Limits) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Rejection("wrong_type", f"{path} must be a finite number")
    return float(value)


def _boolean(_: str, value: Any, path: str, __: Limits) -> bool:
    if not isinstance(value, bool):
        raise Rejection("wrong_type", f"{path} must be true or false")
    return value


_PRIMITIVES: dict[str, Callable[[str, Any, str, Limits], Any]] = {
    "string": _string,
    "int": _integer,
    "long": _integer,
    "double": _number,
    "float": _number,
    "boolean": _boolean,
}


def _record(schema: Mapping[str, Any], value: Any, path: str, limits: Limits) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Rejection("wrong_type", f"{path or 'event'} must be an object")
    names = {f["name"] for f in schema["fields"]}
    unknown = sorted(k for k in value if k not in names and not (path == "" and k == "type"))
    if unknown:
        raise Rejection("unknown_field", ", ".join(f"{path}{'.' if path else ''}{k}" for k in unknown[:5]))
    out: dict[str, Any] = {}
    for field in schema["fields"]:
        name = field["name"]
        sub = f"{path}.{name}" if path else name
        got = value.get(name, _MISSING)
        if got is _MISSING or (got is None and "default" not in field and field["type"] != "null"):
            if "default" not in field:
                raise Rejection("missing_field", sub)
            got = field["default"]
            if got is None:
                out[name] = None
                continue
        out[name] = _check(field["type"], got, sub, limits)
    return out


def validate_event(item: RawItem, codec: Codec, limits: Limits, now_ms: int) -> tuple[str, dict[str, Any]]:
    """(event type, record ready for `codec.encode`) of a valid item; Rejection otherwise."""
    if item.parse_error is not None:
        raise Rejection("invalid_json", item.parse_error[:200])
    value = item.value
    if not isinstance(value, dict):
        raise Rejection("not_an_object", f"got {type(value).__name__}")
    event_type = value.get("type")
    if event_type is None:
        raise Rejection("missing_field", "type")
    if event_type not in EVENT_TYPES:
        raise Rejection("unknown_type", f"{str(event_type)[:40]!r} is not one of {', '.join(EVENT_TYPES)}")
    schema = codec.schema(schema_name(event_type))
    try:
        record = _record(schema, value, "", limits)
    except Rejection as exc:
        exc.event_type = event_type
        raise
    for key in ("event_id", "customer_id", "tenant"):
        if not record[key].strip():
            raise Rejection("missing_field", f"{key} is empty", event_type)
    if record["event_time"] > now_ms + limits.max_future_skew_ms:
        raise Rejection("future_timestamp", f"event_time is more than {limits.max_future_skew_ms} ms ahead", event_type)
    if record["event_time"] < limits.min_event_time_ms:
        raise Rejection("too_old", "event_time is before the accepted minimum", event_type)
    return event_type, record


def schema_name(event_type: str) -> str:
    """Full Avro name of an event type's schema: browse -> crm.events.Browse."""
    return f"crm.events.{event_type.capitalize()}"
