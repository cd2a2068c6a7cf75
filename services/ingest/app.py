"""HTTP front of the ingest path: `POST /v1/events`, `/healthz`, `/metrics`."""

from __future__ import annotations

import hmac
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.common.avro import Codec, default_codec
from services.common.metrics import metrics_handler
from services.ingest.core import NOT_WRITTEN, REJECTED, UNKNOWN, Ingestor, ItemResult, NotAcknowledged
from services.ingest.link import KafkaLink
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from services.ingest.validate import split_body

__all__ = ["create_app", "healthz", "post_events"]

INGESTOR = web.AppKey("ingestor", Ingestor)
LINK = web.AppKey("link", KafkaLink)
SETTINGS = web.AppKey("settings", IngestSettings)
METRICS = web.AppKey("metrics", IngestMetrics)


def create_app(
    settings: IngestSettings, registry: CollectorRegistry | None = None, codec: Codec | None = None
) -> web.Application:
    """The ingest web application; the Kafka producer starts and stops with it.

    It serves at once even while Kafka is unreachable: the producer connects in the background.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = IngestMetrics(registry)
    # aiohttp answers 413 itself for bodies beyond client_max_size.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    codec = codec or default_codec()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        ingestor = Ingestor(codec, None, metrics, settings.limits(), ack_timeout=settings.ack_timeout_seconds)

        def connected(producer: AIOKafkaProducer) -> None:
            ingestor.producer = producer

        link = KafkaLink(settings.kafka_bootstrap, settings.ack_timeout_seconds, connected)
        app[INGESTOR] = ingestor
        app[LINK] = link
        await link.start()  # needs the running loop
        yield
        await link.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(registry))
    return app


def _authorised(request: web.Request, keys: list[bytes]) -> bool:
    given = request.headers.get("X-API-Key", "").encode()
    if not given:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].encode() if auth.startswith("Bearer ") else b""
    # compare against every key so timing does not reveal which one nearly matched
    matches = [hmac.compare_digest(given, key) for key in keys]
    return bool(given) and any(matches)


async def post_events(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        response = await _handle(request, settings)
    except web.HTTPException as exc:
        metrics.requests.labels(str(exc.status)).inc()
        raise
    metrics.requests.labels(str(response.status)).inc()
    metrics.latency.observe(time.perf_counter() - started)
    return response


async def _handle(request: web.Request, settings: IngestSettings) -> web.Response:
    if not _authorised(request, settings.keys()):
        return web.json_response({"error": "missing or invalid API key (X-API-Key header)"}, status=401)
    body = await request.read()
    items = split_body(body, settings.max_depth)
    if not items:
        return web.json_response({"error": "empty body: send a JSON array or NDJSON"}, status=400)
    if len(items) > settings.max_events_per_request:
        return web.json_response(
            {"error": f"more than {settings.max_events_per_request} events in one request"}, status=413
        )
    try:
        results = await request.app[INGESTOR].ingest(items, source="http")
    except NotAcknowledged as exc:
        answer = _summary(exc.results)
        answer["error"] = f"event log unavailable ({exc.cause}); retry the items not_written or unknown"
        return web.json_response(answer, status=503)
    accepted = sum(r.accepted for r in results)
    status = 200 if accepted == len(results) else (422 if accepted == 0 else 207)
    return web.json_response(_summary(results), status=status)


def _summary(results: list[ItemResult]) -> dict[str, Any]:
    """Counts by status and every item's result; `not_written` and `unknown` appear only when some are."""
    counts = Counter(r.status for r in results)
    body: dict[str, Any] = {"accepted": counts["accepted"], "rejected": counts[REJECTED]}
    for status in (NOT_WRITTEN, UNKNOWN):
        if counts[status]:
            body[status] = counts[status]
    body["results"] = [r.as_json() for r in results]
    return body


async def healthz(request: web.Request) -> web.Response:
    """200 while a broker answers a metadata request (checked within a bounded time), 503 otherwise."""
    ok = await request.app[LINK].reachable()
    return web.json_response({"status": "ok" if ok else "degraded", "kafka": ok}, status=200 if ok else 503)
