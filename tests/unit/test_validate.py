import json
from typing import Any

import pytest

from services.common.avro import default_codec
from services.ingest.validate import Limits, RawItem, Rejection, split_body, validate_event

NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z
LIMITS = Limits(max_string_length=32, max_future_skew_ms=60_000)


def item(**fields: Any) -> RawItem:
    body = {"type": "browse", "event_id": "e1", "customer_id": "c1", "tenant": "t", "event_time": NOW - 1000}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not ...}
    return RawItem(json.dumps(body).encode(), body)


def reject(raw_item: RawItem) -> Rejection:
    with pytest.raises(Rejection) as info:
        validate_event(raw_item, default_codec(), LIMITS, NOW)
    return info.value


def test_valid_browse_is_accepted_with_defaults() -> None:
    event_type, record = validate_event(item(product_id="p1", price=9), default_codec(), LIMITS, NOW)
    assert event_type == "browse"
    assert record["price"] == 9.0 and record["page_type"] == "product" and record["session_id"] is None


def test_iso_time_is_converted_to_millis() -> None:
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
def test_bad_events_are_rejected_with_a_reason(fields: dict[str, Any], code: str, detail: str) -> None:
    exc = reject(item(**fields))
    assert exc.code == code
    assert detail in exc.reason


def test_nested_fields_are_checked_with_their_path() -> None:
    order = item(type="order", order_id="o1", status="paid", items=[{"product_id": "p", "price": "1"}])
    exc = reject(order)
    assert exc.code == "wrong_type" and "items[0].price" in exc.reason and exc.event_type == "order"


def test_unknown_order_status_is_a_bad_enum() -> None:
    assert reject(item(type="order", order_id="o1", status="shipped")).code == "bad_enum"


def test_int_range_is_enforced() -> None:
    cart = item(type="cart", action="add", product_id="p", quantity=2**40)
    assert reject(cart).code == "wrong_type"


def test_not_an_object_and_bad_json() -> None:
    assert reject(RawItem(b"[1]", [1])).code == "not_an_object"
    assert reject(RawItem(b"{", None, "Expecting value")).code == "invalid_json"


def test_split_body_json_array_single_object_and_ndjson() -> None:
    assert [i.value for i in split_body(b'[{"a":1},{"b":2}]')] == [{"a": 1}, {"b": 2}]
    assert [i.value for i in split_body(b'{"a":1}')] == [{"a": 1}]
    items = split_body(b'{"a":1}\n\n{"broken\n{"c":3}\n')
    assert [i.value for i in items] == [{"a": 1}, None, {"c": 3}]
    assert items[1].parse_error and items[1].raw == b'{"broken'
    assert split_body(b"  \n") == []


def test_array_items_keep_their_own_bytes() -> None:
    items = split_body(b'[{"a": 1}, {"b": 2}]')
    assert json.loads(items[1].raw) == {"b": 2}


def order(**fields: Any) -> RawItem:
    return item(type="order", order_id="o1", status="paid", **fields)


@pytest.mark.parametrize(
    ("raw_item", "code", "detail"),
    [
        (order(amount=-0.01), "negative_amount", "amount"),
        (order(amount=10, items=[{"product_id": "p", "price": -1}]), "negative_amount", "items[0].price"),
        (item(type="cart", action="add", product_id="p", price=-5), "negative_amount", "price"),
        (item(price=-0.5), "negative_amount", "price"),
        (order(amount=float("nan")), "not_finite", "amount"),
        (order(amount=float("inf")), "not_finite", "amount"),
        (order(amount=10**400), "not_finite", "amount"),
        (item(price=float("-inf")), "not_finite", "price"),
        (order(amount=10_000_000.01), "amount_too_large", "amount"),
        (order(items=[{"product_id": "p", "price": 2e7}]), "amount_too_large", "items[0].price"),
        (order(items=[{"product_id": "p", "quantity": -1}]), "negative_quantity", "items[0].quantity"),
        (item(type="cart", action="remove", product_id="p", quantity=-2), "negative_quantity", "quantity"),
    ],
)
def test_money_and_counts_the_engine_cannot_represent_are_rejected(raw_item: RawItem, code: str, detail: str) -> None:
    exc = reject(raw_item)
    assert exc.code == code
    assert detail in exc.reason


def test_money_at_the_bounds_is_accepted() -> None:
    _, record = validate_event(
        order(amount=0, items=[{"product_id": "p", "price": 1e7, "quantity": 0}]), default_codec(), LIMITS, NOW
    )
    assert record["amount"] == 0.0 and record["items"][0]["price"] == 1e7


def test_json_nan_and_huge_numbers_parse_but_are_rejected() -> None:
    [parsed] = split_body(
        b'{"type":"order","event_id":"e","customer_id":"c","tenant":"t","event_time":1,'
        b'"order_id":"o","status":"paid","amount":NaN}'
    )
    assert reject(parsed).code == "not_finite"
    [parsed] = split_body(item().raw[:-1] + b', "price": 1e999}')
    assert reject(parsed).code == "not_finite"


@pytest.mark.parametrize("field", ["product_id", "session_id", "customer_id", "tenant"])
def test_lone_surrogates_are_rejected_as_bad_text(field: str) -> None:
    [parsed] = split_body(json.dumps({**json.loads(item().raw), field: "ab\ud800cd"}).encode())
    exc = reject(parsed)
    assert exc.code == "bad_text" and field in exc.reason
    exc.reason.encode("utf-8")  # the reason itself goes into an Avro string


def test_lone_surrogate_in_a_map_key_or_an_unknown_field_name_is_rejected_with_an_encodable_reason() -> None:
    profile = item(type="profile", consent={"\udc00sms": True})
    assert reject(profile).code == "bad_text"
    exc = reject(item(**{"col\ud800our": "red"}))
    assert exc.code == "unknown_field"
    exc.reason.encode("utf-8")


def test_deep_nesting_is_rejected_without_recursion_error() -> None:
    deep = b'{"type":"browse","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body in (deep, b"[" * 100_000, b'{"a":' * 100_000, b"[" + deep + b"]"):
        items = split_body(body)
        assert len(items) == 1
        assert reject(items[0]).code == "too_deep"


def test_only_the_deep_item_of_an_array_is_rejected() -> None:
    body = b'[{"type":"browse"}, ' + b"[" * 50 + b"]" * 50 + b', {"type":"cart"}]'
    items = split_body(body, max_depth=32)
    assert [i.value for i in items] == [{"type": "browse"}, None, {"type": "cart"}]
    assert items[1].error_code == "too_deep"


def test_duplicate_keys_are_rejected_at_any_level() -> None:
    base = item().raw.decode()[:-1]
    dup_tenant = (base + ',"tenant":"other"}').encode()
    [parsed] = split_body(dup_tenant)
    exc = reject(parsed)
    assert exc.code == "duplicate_key" and "tenant" in exc.reason
    nested = b'{"type":"profile","consent":{"sms":true,"sms":false}}'
    assert reject(split_body(nested)[0]).code == "duplicate_key"
    items = split_body(b"[" + dup_tenant + b"," + item().raw + b"]")
    assert items[0].error_code == "duplicate_key" and items[1].value == json.loads(item().raw)
    ndjson = split_body(item().raw + b"\n" + dup_tenant + b"\n")
    assert ndjson[0].parse_error is None and ndjson[1].error_code == "duplicate_key"


def test_oversized_item_is_rejected_as_too_large() -> None:
    limits = Limits(max_item_bytes=4096)
    big = item(product_id="x" * 10)
    big = RawItem(big.raw[:-1] + b" " * 5000 + b"}", big.value)
    with pytest.raises(Rejection) as info:
        validate_event(big, default_codec(), limits, NOW)
    assert info.value.code == "too_large" and "4096" in info.value.reason
    validate_event(item(product_id="x" * 10), default_codec(), limits, NOW)  # the same item, small, passes


def test_array_items_keep_their_bytes_as_sent() -> None:
    assert [i.raw for i in split_body(b'[ {"a": 1} ,{"b" : 2}]')] == [b'{"a": 1}', b'{"b" : 2}']
    assert split_body(b"[]") == [] and split_body(b" [ ] ") == []


def test_a_tenant_with_a_colon_is_rejected() -> None:
    # "R:x" / "y" and "R" / "x:y" would share one customer's state
    assert reject(item(tenant="R:x")).code == "bad_tenant"


@pytest.mark.parametrize("tenant", ["}shop", "a{b", "x}"])
def test_a_tenant_with_a_brace_is_rejected(tenant: str) -> None:
    # "}shop" would make the hash tag {}shop:5} empty: a unit's keys over many Redis Cluster slots
    assert reject(item(tenant=tenant)).code == "bad_tenant"


@pytest.mark.parametrize("field", ["customer_id", "event_id", "tenant", "session_id"])
@pytest.mark.parametrize("char", ["\x1f", "\x00", "\n", "\x7f"])
def test_an_id_with_a_control_character_is_rejected(field: str, char: str) -> None:
    """The engines separate the parts of their keys, logs and outbox entries with control
    characters: an id holding one would be read back as two."""
    assert reject(item(**{field: f"x{char}y"})).code == "bad_id"
    order = {"type": "order", "order_id": f"o{char}1", "status": "paid", "amount": 1.0}
    assert reject(item(**order)).code == "bad_id"
