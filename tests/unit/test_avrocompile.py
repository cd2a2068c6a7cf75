"""The compiled Avro readers and writers agree with fastavro, byte for byte, on random records of
every schema of the contract."""

import io
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from services.common.avro import schema_dir
from services.common.avrocompile import compile_reader, compile_writer, zigzag

SCHEMAS = {p.stem: json.loads(p.read_text()) for p in sorted(schema_dir().glob("*.avsc"))}


_SCALARS: dict[str, Callable[[random.Random], Any]] = {
    "null": lambda rng: None,
    "boolean": lambda rng: rng.random() < 0.5,
    "int": lambda rng: rng.choice([0, 1, -1, 63, 64, -65, rng.randint(-(2**31), 2**31 - 1)]),
    "long": lambda rng: rng.choice([0, 1, -1, 64, -65, 1_700_000_000_000, rng.randint(-(2**63), 2**63 - 1)]),
    "float": lambda rng: rng.choice([0.0, 1.5, -2.25]),
    "double": lambda rng: rng.choice([0.0, 1.5, -2.25, rng.uniform(-1e6, 1e6)]),
    "string": lambda rng: rng.choice(["", "a", "客户-42", "x" * rng.randint(0, 200)]),
    "bytes": lambda rng: bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))),
}


def _random(t: Any, rng: random.Random, names: dict[str, Any], ns: str | None = None) -> Any:
    if isinstance(t, list):
        return _random(rng.choice(t), rng, names, ns)
    t = names.get(t, {"type": t}) if isinstance(t, str) else t
    kind = t["type"]
    if isinstance(kind, (dict, list)):
        return _random(kind, rng, names, ns)
    if t.get("logicalType") == "timestamp-millis":
        return rng.choice([0, 1_700_000_000_123, rng.randint(0, 4_000_000_000_000)])
    if kind in _SCALARS:
        return _SCALARS[kind](rng)
    if kind == "enum":
        names[t["name"]] = t
        return rng.choice(t["symbols"])
    if kind == "array":
        return [_random(t["items"], rng, names, ns) for _ in range(rng.randint(0, 3))]
    if kind == "map":
        return {f"k{i}": _random(t["values"], rng, names, ns) for i in range(rng.randint(0, 3))}
    if kind == "record":
        names[t["name"]] = t
        return {f["name"]: _random(f["type"], rng, names, ns) for f in t["fields"]}
    raise AssertionError(kind)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_compiled_codec_matches_fastavro_on_random_records(name: str) -> None:
    schema = SCHEMAS[name]
    parsed = fastavro.parse_schema(schema)
    write, read = compile_writer(schema), compile_reader(schema)
    rng = random.Random(name)
    for _ in range(300):
        record = _random(schema, rng, {})
        expected = io.BytesIO()
        fastavro.schemaless_writer(expected, parsed, record)
        assert write(record) == expected.getvalue()
        decoded = fastavro.schemaless_reader(io.BytesIO(expected.getvalue()), parsed, None)
        assert read(expected.getvalue(), 0) == _plain(decoded)


def test_reader_of_some_fields_stops_after_the_last_of_them() -> None:
    schema = SCHEMAS["browse"]
    record = {"event_id": "e", "customer_id": "c", "tenant": "t", "event_time": 5, "price": 2.0}
    body = compile_writer(schema)(record)
    read = compile_reader(schema, ["customer_id", "event_time"])
    assert read(body, 0) == {"customer_id": "c", "event_time": 5}
    # the fields after event_time are not even looked at: a cut body still reads
    assert read(body[: 2 + 2 + 2 + 1], 0) == {"customer_id": "c", "event_time": 5}


def test_writer_fills_defaults_and_takes_datetimes() -> None:
    schema = SCHEMAS["order"]
    at = datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    record = {"event_id": "e", "customer_id": "c", "tenant": "t", "event_time": at, "order_id": "o", "status": "paid"}
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, fastavro.parse_schema(schema), record, strict_allow_default=True)
    assert compile_writer(schema)(record) == expected.getvalue()


@pytest.mark.parametrize(
    "bad",
    [{"event_id": 1}, {"event_time": "yesterday"}, {"status": "lost"}, {"customer_id": None}],
)
def test_writer_refuses_wrong_types(bad: dict[str, Any]) -> None:
    record = {"event_id": "e", "customer_id": "c", "tenant": "t", "event_time": 1, "order_id": "o", "status": "paid"}
    with pytest.raises((TypeError, AttributeError, KeyError, ValueError)):
        compile_writer(SCHEMAS["order"])({**record, **bad})


def test_truncated_body_raises() -> None:
    body = compile_writer(SCHEMAS["order"])(
        {"event_id": "e", "customer_id": "c", "tenant": "t", "event_time": 1, "order_id": "o", "status": "paid"}
    )
    with pytest.raises((IndexError, ValueError)):
        compile_reader(SCHEMAS["order"])(body[:-3], 0)


@pytest.mark.parametrize("n", [0, -1, 1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1])
def test_zigzag_matches_the_specification(n: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, {"type": "long"}, n)
    assert zigzag(n) == out.getvalue()


def test_negative_length_is_refused_not_looped_on() -> None:
    body = b"\x01" + b"abc"  # zig-zag -1 as a string length
    with pytest.raises(ValueError):
        compile_reader(SCHEMAS["browse"])(body, 0)
