"""POST /v1/events against the real broker: valid events on their topics, bad ones in the DLQ."""

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.common.avro import default_codec
from services.common.tail import read_topic
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.conftest import StackInfo

KEY = "test-key-1"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(stack: StackInfo) -> AsyncIterator[Client]:
    settings = IngestSettings(kafka_bootstrap=stack.kafka_bootstrap, api_keys=f"other,{KEY}", max_body_bytes=64 * 1024)
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    async with TestClient(TestServer(app)) as client:
        client.registry = registry  # type: ignore[attr-defined]
        yield client


async def _records(bootstrap: str, topic: str, predicate: Callable[..., bool]) -> list[dict[str, Any]]:
    return [r async for r in read_topic(bootstrap, topic, default_codec()) if predicate(r)]


async def test_mixed_batch_valid_on_topics_bad_in_dlq_and_all_listed(stack: StackInfo, client: Client) -> None:
    run = uuid.uuid4().hex[:10]
    now = int(time.time() * 1000)

    def ev(kind: str, n: int, **fields: Any) -> dict[str, Any]:
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


async def test_all_rejected_is_422_and_all_valid_is_200(stack: StackInfo, client: Client) -> None:
    run = uuid.uuid4().hex[:10]
    now = int(time.time() * 1000)
    good = {"type": "browse", "event_id": f"{run}-a", "customer_id": "c", "tenant": "t", "event_time": now}
    response = await client.post("/v1/events", json=[good], headers={"X-API-Key": KEY})
    assert response.status == 200 and (await response.json())["accepted"] == 1
    response = await client.post("/v1/events", json=[{"type": "browse"}], headers={"X-API-Key": KEY})
    assert response.status == 422
    assert (await response.json())["results"][0]["reason"].startswith("missing_field")


async def test_api_key_is_required(client: Client) -> None:
    response = await client.post("/v1/events", data=b"[]")
    assert response.status == 401
    response = await client.post("/v1/events", data=b"[]", headers={"X-API-Key": "wrong"})
    assert response.status == 401
    response = await client.post("/v1/events", data=b"[]", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status == 400  # authorised, but empty


async def test_oversized_body_is_413(client: Client) -> None:
    big = b"[" + b",".join([b'{"type":"browse"}'] * 5000) + b"]"
    response = await client.post("/v1/events", data=big, headers={"X-API-Key": KEY})
    assert response.status == 413


async def test_health_and_metrics_count_by_type_and_reason(stack: StackInfo, client: Client) -> None:
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


def _event(run: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "browse",
        "event_id": f"{run}-{n}",
        "customer_id": f"{run}-c",
        "tenant": "shop",
        "event_time": int(time.time() * 1000) - 1000,
        **fields,
    }


async def test_negative_amount_is_422_and_dead_lettered_with_its_reason(stack: StackInfo, client: Client) -> None:
    run = uuid.uuid4().hex[:10]
    raw = json.dumps(_event(run, 1, type="order", order_id="o1", status="paid", amount=-0.01)).encode()
    response = await client.post("/v1/events", data=raw, headers={"X-API-Key": KEY})
    assert response.status == 422
    assert (await response.json())["results"][0]["reason"].startswith("negative_amount:")
    dead = await _records(stack.kafka_bootstrap, "crm.events.dlq", lambda r: r["original"] == raw)
    assert len(dead) == 1 and dead[0]["reason"].startswith("negative_amount: amount")
    assert dead[0]["topic"] == "crm.events.order"


async def test_deep_nesting_is_a_client_error_not_500(big_client: Client) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        response = await big_client.post("/v1/events", data=body, headers={"X-API-Key": KEY})
        assert response.status == 422
        assert (await response.json())["results"][0]["reason"].startswith("too_deep")


async def test_lone_surrogate_in_one_item_rejects_that_item_only(stack: StackInfo, client: Client) -> None:
    run = uuid.uuid4().hex[:10]
    good = [_event(run, 1, product_id="p1"), _event(run, 3, product_id="p3")]
    bad = json.dumps(_event(run, 2, product_id="bad\ud800")).encode()  # json.dumps writes "\ud800"
    body = b"[" + json.dumps(good[0]).encode() + b"," + bad + b"," + json.dumps(good[1]).encode() + b"]"
    response = await client.post("/v1/events", data=body, headers={"X-API-Key": KEY})
    assert response.status == 207
    results = (await response.json())["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["reason"].startswith("bad_text: product_id")
    found = await _records(stack.kafka_bootstrap, "crm.events.browse", lambda r: r["event_id"].startswith(run))
    assert sorted(r["event_id"] for r in found) == [f"{run}-1", f"{run}-3"]
    dead = await _records(stack.kafka_bootstrap, "crm.events.dlq", lambda r: r["original"] == bad)
    assert len(dead) == 1


@pytest.fixture
async def big_client(stack: StackInfo) -> AsyncIterator[Client]:
    settings = IngestSettings(kafka_bootstrap=stack.kafka_bootstrap, api_keys=KEY, max_body_bytes=4 * 1024 * 1024)
    async with TestClient(TestServer(create_app(settings, registry=CollectorRegistry()))) as client:
        yield client


async def test_two_megabyte_item_is_rejected_alone_and_its_dead_letter_fits(
    stack: StackInfo, big_client: Client
) -> None:
    run = uuid.uuid4().hex[:10]
    huge = json.dumps(_event(run, 1, product_id="x" * (2 * 1024 * 1024))).encode()
    small = json.dumps(_event(run, 2, product_id="p")).encode()
    response = await big_client.post("/v1/events", data=huge + b"\n" + small, headers={"X-API-Key": KEY})
    assert response.status == 207
    results = (await response.json())["results"]
    assert results[0]["status"] == "rejected" and results[0]["reason"].startswith("too_large:")
    assert results[1]["status"] == "accepted"
    dead = await _records(stack.kafka_bootstrap, "crm.events.dlq", lambda r: r["original"] == huge[: 512 * 1024])
    assert len(dead) == 1 and "original cut to its first" in dead[0]["reason"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return cast(int, sock.getsockname()[1])


async def test_without_a_broker_ingest_answers_503_in_time_with_per_item_status_and_health_is_503() -> None:
    settings = IngestSettings(kafka_bootstrap=f"127.0.0.1:{_free_port()}", api_keys=KEY, ack_timeout_seconds=2)
    run = uuid.uuid4().hex[:10]
    body = json.dumps([_event(run, 1), _event(run, 2, price=-1)]).encode()
    async with TestClient(TestServer(create_app(settings, registry=CollectorRegistry()))) as client:
        response = await asyncio.wait_for(client.post("/v1/events", data=body, headers={"X-API-Key": KEY}), 30)
        assert response.status == 503
        answer = await response.json()
        assert [r["status"] for r in answer["results"]] == ["not_written", "rejected"]
        assert answer["results"][1]["reason"].startswith("negative_amount")
        assert answer["accepted"] == 0 and answer["not_written"] == 1
        metrics = await (await client.get("/metrics")).text()
        assert "crm_ingest_dead_letters_lost_total 1.0" in metrics  # the rejection's dead letter, not written
        health = await asyncio.wait_for(client.get("/healthz"), 30)
        assert health.status == 503 and await health.json() == {"status": "degraded", "kafka": False}
