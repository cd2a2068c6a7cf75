import json

import pytest

from services.common.avro import default_codec
from services.ingest.validate import Limits, RawItem, Rejection, split_body, validate_event

NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z
LIMITS = Limits(max_string_length=32, max_future_skew_ms=60_000)


def item(**fields):
    body = {"type": "browse", "event_id": "e1", "customer_id": "c1", "tenant": "t", "event_time": NOW - 1000}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not ...}
    return RawItem(json.dumps(body).encode(), body)


def reject(raw_item):
    with pytest.raises(Rejection) as info:
        validate_event(raw_item, default_codec(), LIMITS, NOW)
    return info.value


def test_valid_browse_is_accepted_with_defaults():
    event_type, record = validate_event(item(product_id="p1", price=9), default_codec(), LIMITS, NOW)
    assert event_type == "browse"
    assert record["price"] == 9.0 and record["page_type"] == "product" and record["session_id"] is None


def test_iso_time_is_converted_to_millis():
    _, record = validate_event(item(event_time="2025-11-24T15:00:00Z"), default_codec(), LIMITS, NOW)
    assert record["event_time"] == NOW - 3_600_000


@pytest.mark.parametrize(
    ("fields", "code", "detail"),
    [
        ({"customer_id": ...}, "missing_field", "customer_id"),
        ({"customer_id": None}, "missing_field", "customer_id"),
        ({"customer_id": "  "}, "missing_field", "customer_id is empty"),
        ({"type": "wishlist"}, "unknown_type", "wishlist"),
        ({"type": ...}, "missing_field", "type"),
        ({"price": "cheap"}, "wrong_type", "price"),
        ({"event_time": True}, "wrong_type", "event_time"),
        ({"event_time": "yesterday"}, "wrong_type", "event_time"),
        ({"event_time": "2025-11-24T15:00:00"}, "wrong_type", "time zone"),
        ({"product_id": "x" * 33}, "too_long", "product_id"),
        ({"event_time": NOW + 61_000}, "future_timestamp", "ahead"),
        ({"event_time": 86_400_000}, "too_old", ""),
        ({"page_type": "landing"}, "bad_enum", "page_type"),
        ({"colour": "red"}, "unknown_field", "colour"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(fields, code, detail):
    exc = reject(item(**fields))
    assert exc.code == code
    assert detail in exc.reason


def test_nested_fields_are_checked_with_their_path():
    order = item(type="order", order_id="o1", status="paid", items=[{"product_id": "p", "price": "1"}])
    exc = reject(order)
    assert exc.code == "wrong_type" and "items[0].price" in exc.reason and exc.event_type == "order"


def test_unknown_order_status_is_a_bad_enum():
    assert reject(item(type="order", order_id="o1", status="shipped")).code == "bad_enum"


def test_int_range_is_enforced():
    cart = item(type="cart", action="add", product_id="p", quantity=2**40)
    assert reject(cart).code == "wrong_type"


def test_not_an_object_and_bad_json():
    assert reject(RawItem(b"[1]", [1])).code == "not_an_object"
    assert reject(RawItem(b"{", None, "Expecting value")).code == "invalid_json"


def test_split_body_json_array_single_object_and_ndjson():
    assert [i.value for i in split_body(b'[{"a":1},{"b":2}]')] == [{"a": 1}, {"b": 2}]
    assert [i.value for i in split_body(b'{"a":1}')] == [{"a": 1}]
    items = split_body(b'{"a":1}\n\n{"broken\n{"c":3}\n')
    assert [i.value for i in items] == [{"a": 1}, None, {"c": 3}]
    assert items[1].parse_error and items[1].raw == b'{"broken'
    assert split_body(b"  \n") == []


def test_array_items_keep_their_own_bytes():
    items = split_body(b'[{"a": 1}, {"b": 2}]')
    assert json.loads(items[1].raw) == {"b": 2}
