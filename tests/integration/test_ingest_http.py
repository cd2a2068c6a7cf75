"""POST /v1/events against the real broker: valid events on their topics, bad ones in the DLQ."""

import json
import time
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.common.avro import default_codec
from services.common.tail import read_topic
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings

KEY = "test-key-1"


@pytest.fixture
async def client(stack):
    settings = IngestSettings(kafka_bootstrap=stack.kafka_bootstrap, api_keys=f"other,{KEY}", max_body_bytes=64 * 1024)
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    async with TestClient(TestServer(app)) as client:
        client.registry = registry
        yield client


async def _records(bootstrap, topic, predicate):
    return [r async for r in read_topic(bootstrap, topic, default_codec()) if predicate(r)]


async def test_mixed_batch_valid_on_topics_bad_in_dlq_and_all_listed(stack, client):
    run = uuid.uuid4().hex[:10]
    now = int(time.time() * 1000)

    def ev(kind, n, **fields):
        return {
            "type": kind,
            "event_id": f"{run}-{n}",
            "customer_id": f"{run}-cust-{n % 3}",
            "tenant": "shop",
            "event_time": now - 60_000 + n,
            **fields,
        }

    valid = [
        ev("browse", 1, product_id="p1", price=19.9, session_id="s1"),
        ev("cart", 2, action="add", product_id="p1", quantity=2, price=19.9),
        ev(
            "order",
            3,
            order_id="o1",
            status="paid",
            amount=39.8,
            items=[{"product_id": "p1", "quantity": 2, "price": 19.9}],
        ),
        ev("follow", 4, target_type="brand", target_id="shop"),
        ev("profile", 5, city="Hangzhou", timezone="Asia/Shanghai", consent={"sms": False}),
    ]
    no_customer = ev("browse", 6)
    del no_customer["customer_id"]
    bad = [
        (b'{"type": "browse", "event_id": "' + run.encode() + b'-7", ', "invalid_json"),
        (json.dumps(no_customer).encode(), "missing_field"),
        (json.dumps(ev("cart", 8, action="add", product_id="p1", quantity="two")).encode(), "wrong_type"),
        (json.dumps(ev("wishlist", 9)).encode(), "unknown_type"),
        (json.dumps(ev("browse", 10, product_id="x" * 1000)).encode(), "too_long"),
        (json.dumps(ev("browse", 11, event_time=now + 3 * 86_400_000)).encode(), "future_timestamp"),
    ]
    lines = (
        [json.dumps(v).encode() for v in valid[:3]] + [b for b, _ in bad] + [json.dumps(v).encode() for v in valid[3:]]
    )
    response = await client.post("/v1/events", data=b"\n".join(lines), headers={"X-API-Key": KEY})
    assert response.status == 207
    body = await response.json()
    assert body["accepted"] == 5 and body["rejected"] == 6
    results = body["results"]
    assert [r["index"] for r in results] == list(range(11))
    assert [r["status"] for r in results] == ["accepted"] * 3 + ["rejected"] * 6 + ["accepted"] * 2
    assert [r["reason"].split(":")[0] for r in results[3:9]] == [code for _, code in bad]

    # every valid event is readable from its topic with the same content, keyed by customer
    for event in valid:
        topic = f"crm.events.{event['type']}"
        found = await _records(stack.kafka_bootstrap, topic, lambda r, e=event: r["event_id"] == e["event_id"])
        assert len(found) == 1, topic
        record = found[0]
        assert record["_key"] == event["customer_id"]
        assert int(record["event_time"].timestamp() * 1000) == event["event_time"]
        for key, value in event.items():
            if key not in ("type", "event_time"):
                got = record[key]
                if key == "items":
                    got = [{k: v for k, v in item.items() if k in value[0]} for item in got]
                assert got == value, (topic, key)

    # every bad one is in the DLQ with its reason and original bytes
    dead = await _records(stack.kafka_bootstrap, "crm.events.dlq", lambda r: run.encode() in r["original"])
    by_original = {r["original"]: r for r in dead}
    for raw, code in bad:
        assert raw in by_original, code
        assert by_original[raw]["reason"].startswith(code + ":")
        assert by_original[raw]["source"] == "http"
    assert by_original[bad[2][0]]["topic"] == "crm.events.cart"


async def test_all_rejected_is_422_and_all_valid_is_200(stack, client):
    run = uuid.uuid4().hex[:10]
    now = int(time.time() * 1000)
    good = {"type": "browse", "event_id": f"{run}-a", "customer_id": "c", "tenant": "t", "event_time": now}
    response = await client.post("/v1/events", json=[good], headers={"X-API-Key": KEY})
    assert response.status == 200 and (await response.json())["accepted"] == 1
    response = await client.post("/v1/events", json=[{"type": "browse"}], headers={"X-API-Key": KEY})
    assert response.status == 422
    assert (await response.json())["results"][0]["reason"].startswith("missing_field")


async def test_api_key_is_required(client):
    response = await client.post("/v1/events", data=b"[]")
    assert response.status == 401
    response = await client.post("/v1/events", data=b"[]", headers={"X-API-Key": "wrong"})
    assert response.status == 401
    response = await client.post("/v1/events", data=b"[]", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status == 400  # authorised, but empty


async def test_oversized_body_is_413(client):
    big = b"[" + b",".join([b'{"type":"browse"}'] * 5000) + b"]"
    response = await client.post("/v1/events", data=big, headers={"X-API-Key": KEY})
    assert response.status == 413


async def test_health_and_metrics_count_by_type_and_reason(stack, client):
    run = uuid.uuid4().hex[:10]
    now = int(time.time() * 1000)
    events = [
        {
            "type": "cart",
            "event_id": f"{run}-1",
            "customer_id": "c",
            "tenant": "t",
            "event_time": now,
            "action": "add",
            "product_id": "p",
        },
        {
            "type": "cart",
            "event_id": f"{run}-2",
            "customer_id": "c",
            "tenant": "t",
            "event_time": now,
            "action": "drop",
            "product_id": "p",
        },
    ]
    response = await client.post("/v1/events", json=events, headers={"X-API-Key": KEY})
    assert response.status == 207
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["kafka"] is True
    text = await (await client.get("/metrics")).text()
    assert 'crm_ingest_events_accepted_total{type="cart"} 1.0' in text
    assert 'crm_ingest_events_rejected_total{reason="bad_enum",type="cart"} 1.0' in text
    assert 'crm_ingest_requests_total{code="207"} 1.0' in text
    assert "crm_ingest_request_duration_seconds_count 1.0" in text
