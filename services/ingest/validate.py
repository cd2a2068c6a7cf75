"""Pure validation: raw input item -> (event type, Avro record), or a Rejection with a reason.

The rules derive from `schemas/*.avsc`: required fields are those without a default, types and
enum symbols come from the schema. On top: size, nesting and string length limits, text that
UTF-8 can carry, money fields (`amount`, `price`) finite, non-negative and below a maximum,
counts (`quantity`) non-negative, and an event-time window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.avro import Codec
from services.common.constants import EVENT_TYPES, has_control
from services.common.deadletter import printable
from services.common.errors import CrmError
from services.ingest.body import DEFAULT_MAX_DEPTH, RawItem, split_body

__all__ = ["Limits", "RawItem", "Rejection", "printable", "schema_name", "split_body", "validate_event"]

_MISSING = object()

# Fields the engine reads as money or as a count, by name in every schema that has them.
MONEY_FIELDS = frozenset({"amount", "price"})
COUNT_FIELDS = frozenset({"quantity"})


class Rejection(CrmError, ValueError):
    """An input item that cannot be accepted; `code` is a small fixed vocabulary (metric label)."""

    def __init__(self, code: str, detail: str = "", event_type: str = "") -> None:
        self.code = code
        self.detail = printable(detail)  # the reason goes into an Avro string: it must encode
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
    max_amount: float = 10_000_000.0
    max_depth: int = DEFAULT_MAX_DEPTH
    max_item_bytes: int = 512 * 1024


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
        return _map(schema, value, path, limits)
    if kind == "record":
        return _record(schema, value, path, limits)
    return _check(kind, value, path, limits)


def _map(schema: Mapping[str, Any], value: Any, path: str, limits: Limits) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Rejection("wrong_type", f"{path} must be an object")
    for key in value:
        _text(key, f"{path} key", limits)
    return {k: _check(schema["values"], v, f"{path}.{k}", limits) for k, v in value.items()}


def _text(value: str, path: str, limits: Limits) -> str:
    if len(value) > limits.max_string_length:
        raise Rejection("too_long", f"{path} is longer than {limits.max_string_length} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON "\ud800" decodes to a lone surrogate, which Avro cannot write
            raise Rejection("bad_text", f"{path} holds a lone UTF-16 surrogate") from None
    return value


def _string(_: str, value: Any, path: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise Rejection("wrong_type", f"{path} must be a string")
    return _text(value, path, limits)


def _integer(kind: str, value: Any, path: str, _: Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejection("wrong_type", f"{path} must be an integer")
    bound = 2**31 if kind == "int" else 2**63
    if not -bound <= value < bound:
        raise Rejection("wrong_type", f"{path} is out of range for {kind}")
    return value


def _number(_: str, value: Any, path: str, __: Limits) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejection("wrong_type", f"{path} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any double
        raise Rejection("not_finite", f"{path} is beyond the range of a double") from None
    if not math.isfinite(number):
        raise Rejection("not_finite", f"{path} must be a finite number")
    return number


def _money(value: float, path: str, limits: Limits) -> None:
    if value < 0:
        raise Rejection("negative_amount", f"{path} must not be negative")
    if value > limits.max_amount:
        raise Rejection("amount_too_large", f"{path} is over the maximum of {limits.max_amount:g}")


def _count(value: int, path: str) -> None:
    if value < 0:
        raise Rejection("negative_quantity", f"{path} must not be negative")


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
        raise Rejection("unknown_field", ", ".join(f"{path}{'.' if path else ''}{k[:64]}" for k in unknown[:5]))
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
        out[name] = checked = _check(field["type"], got, sub, limits)
        if checked is not None and name in MONEY_FIELDS and isinstance(checked, float):
            _money(checked, sub, limits)
        elif checked is not None and name in COUNT_FIELDS and isinstance(checked, int):
            _count(checked, sub)
    return out


# identifiers: no control characters in them
ID_FIELDS = ("event_id", "customer_id", "tenant", "order_id", "referrer_customer_id", "session_id")


def validate_event(item: RawItem, codec: Codec, limits: Limits, now_ms: int) -> tuple[str, dict[str, Any]]:
    """(event type, record ready for `codec.encode`) of a valid item; Rejection otherwise."""
    event_type = _event_type(item, limits)
    schema = codec.schema(schema_name(event_type))
    try:
        record = _record(schema, item.value, "", limits)
    except Rejection as exc:
        exc.event_type = event_type
        raise
    for key in ("event_id", "customer_id", "tenant"):
        if not record[key].strip():
            raise Rejection("missing_field", f"{key} is empty", event_type)
    if any(c in record["tenant"] for c in ":{}"):  # the tenant leads the Redis keys' hash tags {tenant:shard}
        raise Rejection("bad_tenant", "tenant must not contain ':', '{' or '}'", event_type)
    for key in ID_FIELDS:  # the engines' keys, logs and outboxes separate their parts with them
        if isinstance(record.get(key), str) and has_control(record[key]):
            raise Rejection("bad_id", f"{key} contains a control character", event_type)
    if record["event_time"] > now_ms + limits.max_future_skew_ms:
        raise Rejection("future_timestamp", f"event_time is more than {limits.max_future_skew_ms} ms ahead", event_type)
    if record["event_time"] < limits.min_event_time_ms:
        raise Rejection("too_old", "event_time is before the accepted minimum", event_type)
    return event_type, record


def _event_type(item: RawItem, limits: Limits) -> str:
    """The `type` of an item that parsed to an object within the size limit; Rejection otherwise."""
    if len(item.raw) > limits.max_item_bytes:
        raise Rejection("too_large", f"item is {len(item.raw)} bytes, over the limit of {limits.max_item_bytes}")
    if item.parse_error is not None:
        raise Rejection(item.error_code, item.parse_error[:200])
    value = item.value
    if not isinstance(value, dict):
        raise Rejection("not_an_object", f"got {type(value).__name__}")
    event_type = value.get("type")
    if event_type is None:
        raise Rejection("missing_field", "type")
    if event_type not in EVENT_TYPES:
        raise Rejection("unknown_type", f"{str(event_type)[:40]!r} is not one of {', '.join(EVENT_TYPES)}")
    return str(event_type)


def schema_name(event_type: str) -> str:
    """Full Avro name of an event type's schema: browse -> crm.events.Browse."""
    return f"crm.events.{event_type.capitalize()}"
