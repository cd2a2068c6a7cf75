"""The analytics HTTP API for marketers (aiohttp, like ingest): stage counts now or at any
instant, flows between two instants, a stage-population series; `/healthz` and `/metrics`.

Every `/v1/{tenant}/...` request needs an API key (`X-API-Key` or `Authorization: Bearer`) from
`CRM_ANALYTICS_API_KEYS`; 401 without a valid one, 403 when the key is not for that tenant or
no such tenant has data. A bad query (unknown model, an instant that does not parse, `to`
before `from`) gets 400 naming the parameter.

Run it with `python -m services.analytics.api` (or `crm analytics api`).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.analytics import query
from services.analytics.audience import ATTRIBUTES, BEHAVIOURS, FOLLOW_TARGETS, ExpressionError, Node, parse, terms
from services.analytics.campaigns import CampaignSpec, runs
from services.analytics.query import AUDIENCE_NAME, EXPORT_FORMATS
from services.analytics.settings import AnalyticsSettings
from services.common import keys
from services.common.clock import tenant_clock
from services.common.constants import MAX_TIME_MS, MODEL_STAGES, checked_tenant
from services.common.errors import ConfigError
from services.common.metrics import PREFIX, metrics_handler
from services.common.redisbatch import connect
from services.common.settings import config_problem, load_settings
from services.common.times import iso, parse_instant
from services.common.units import read_clocks, tenant_shards

__all__ = ["create_app", "main"]

SETTINGS = web.AppKey("settings", AnalyticsSettings)
REDIS = web.AppKey("redis", Redis)
KEYS: web.AppKey[dict[bytes, frozenset[str] | None]] = web.AppKey("keys")
MAX_SERIES_POINTS = 400
_NOW = query.NOW  # every transition applied so far


class BadQuery(Exception):
    """A query the API cannot answer: 400 with this message."""


def create_app(settings: AnalyticsSettings, registry: CollectorRegistry | None = None) -> web.Application:
    """The analytics web application; its Redis client opens and closes with it. ValueError for
    API keys that do not parse."""
    registry = registry if registry is not None else CollectorRegistry()
    requests = Counter(f"{PREFIX}analytics_requests", "API requests by status", ["status"], registry=registry)
    latency = Histogram(f"{PREFIX}analytics_request_seconds", "Time to answer an API request", registry=registry)
    app = web.Application(middlewares=[_measured(requests, latency)])
    app[SETTINGS] = settings
    app[KEYS] = settings.api_keys()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = connect(settings.redis_url, settings.redis_cluster)
        yield
        await app[REDIS].aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/{tenant}/stages/{model}/counts", stage_counts)
    app.router.add_get("/v1/{tenant}/stages/{model}/flow", stage_flow)
    app.router.add_get("/v1/{tenant}/stages/{model}/series", stage_series)
    app.router.add_get("/", page)
    app.router.add_get("/static/{file}", static)
    app.router.add_get("/v1/{tenant}/info", info)
    app.router.add_get("/v1/{tenant}/campaigns/results", campaign_results)
    app.router.add_get("/v1/{tenant}/campaigns", list_campaigns)
    app.router.add_post("/v1/{tenant}/campaigns", create_campaign)
    app.router.add_delete("/v1/{tenant}/campaigns/{name}", delete_campaign)
    app.router.add_get("/v1/{tenant}/audiences", list_audiences)
    app.router.add_post("/v1/{tenant}/audiences", save_audience)
    app.router.add_get("/v1/{tenant}/audiences/count", audience_count)
    app.router.add_get("/v1/{tenant}/audiences/export", audience_export)
    app.router.add_get("/v1/{tenant}/audiences/crossing", audience_crossing)
    app.router.add_get("/v1/{tenant}/audiences/overlap", audience_overlap)
    app.router.add_get("/v1/{tenant}/audiences/{name}/count", audience_count)
    app.router.add_get("/v1/{tenant}/audiences/{name}/export", audience_export)
    app.router.add_get("/v1/{tenant}/audiences/{name}/crossing", audience_crossing)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(registry))
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _measured(requests: Counter, latency: Histogram) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except BadQuery as exc:
            response = web.json_response({"error": str(exc)}, status=400)
        except ExpressionError as exc:
            response = web.json_response({"error": str(exc), "position": exc.position}, status=400)
        except RedisError as exc:
            response = web.json_response({"error": f"the store is not answering ({type(exc).__name__}); retry"},
                                         status=503)  # fmt: skip
        except web.HTTPException as exc:
            requests.labels(str(exc.status)).inc()
            raise
        requests.labels(str(response.status)).inc()
        latency.observe(time.perf_counter() - started)
        return response

    return middleware


async def _tenant(request: web.Request, *, with_data: bool = True) -> str:
    """The tenant of the path, once the key may read it and (`with_data`) it has data; else
    401/403. Scheduling a campaign needs no data yet: a brand may plan before its first event."""
    tenant = request.match_info["tenant"]
    given = request.headers.get("X-API-Key", "").encode()
    if not given:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].encode() if auth.startswith("Bearer ") else b""
    scope: frozenset[str] | None = frozenset()
    found = False
    for key, tenants in request.app[KEYS].items():  # every key compared: timing tells nothing
        if hmac.compare_digest(given, key):
            found, scope = True, tenants
    if not given or not found:
        raise web.HTTPUnauthorized(
            text='{"error": "missing or invalid API key (X-API-Key header)"}', content_type="application/json"
        )
    known = not with_data or await request.app[REDIS].sismember(keys.tenants_key(), tenant)
    if (scope is not None and tenant not in scope) or not known:
        raise web.HTTPForbidden(
            text=json.dumps({"error": f"this key may not read tenant {tenant[:100]!r}, or it has no data"}),
            content_type="application/json",
        )
    return tenant


def _model(request: web.Request) -> str:
    model = request.match_info["model"]
    if model not in MODEL_STAGES:
        raise BadQuery(f"unknown model {model!r}; one of {', '.join(MODEL_STAGES)}")
    return model


def _instant(request: web.Request, name: str, default: int | None = None) -> int:
    text = request.query.get(name)
    if text is None:
        if default is None:
            raise BadQuery(f"missing parameter `{name}`")
        return default
    try:
        at = parse_instant(text)
    except ValueError as exc:
        raise BadQuery(f"parameter `{name}`: {exc}") from None
    if not 0 <= at < MAX_TIME_MS:
        raise BadQuery(f"parameter `{name}`: {text!r} is out of range")
    return at


def _period(request: web.Request) -> tuple[int, int]:
    t0, t1 = _instant(request, "from"), _instant(request, "to")
    if t1 < t0:
        raise BadQuery(f"`to` ({iso(t1)}) is before `from` ({iso(t0)})")
    return t0, t1


async def stage_counts(request: web.Request) -> web.Response:
    """Each stage's customers now (`at` left out) or at instant `at`."""
    tenant, model = await _tenant(request), _model(request)
    at = _instant(request, "at", _NOW)
    settings = request.app[SETTINGS]
    found = await query.counts(request.app[REDIS], tenant, model, at, partitions=settings.partitions,
                               snapshot_every=settings.analytics_snapshot_every)  # fmt: skip
    return web.json_response({"tenant": tenant, "model": model, "at": iso(at) if "at" in request.query else None,
                              "counts": found, "total": sum(found.values())})  # fmt: skip


async def stage_flow(request: web.Request) -> web.Response:
    """The full flow matrix between `from` and `to` and the conversion between adjacent layers."""
    tenant, model = await _tenant(request), _model(request)
    t0, t1 = _period(request)
    settings = request.app[SETTINGS]
    found = await query.flow(request.app[REDIS], tenant, model, t0, t1, partitions=settings.partitions,
                             snapshot_every=settings.analytics_snapshot_every)  # fmt: skip
    return web.json_response({"tenant": tenant, "model": model, "from": iso(t0), "to": iso(t1), **found.as_dict()})


async def stage_series(request: web.Request) -> web.Response:
    """Each stage's customers at `from`, every `step_days` (default 1) after it, up to `to`."""
    tenant, model = await _tenant(request), _model(request)
    t0, t1 = _period(request)
    try:
        step = int(request.query.get("step_days", "1"))
    except ValueError:
        raise BadQuery("parameter `step_days`: a whole number of days") from None
    if step < 1:
        raise BadQuery("parameter `step_days`: at least 1")
    instants = list(range(t0, t1 + 1, step * 86_400_000))
    if len(instants) > MAX_SERIES_POINTS:
        raise BadQuery(f"more than {MAX_SERIES_POINTS} points: widen `step_days` or shorten the period")
    settings = request.app[SETTINGS]
    points = await query.series(request.app[REDIS], tenant, model, instants, partitions=settings.partitions,
                                snapshot_every=settings.analytics_snapshot_every)  # fmt: skip
    shown = [{"at": iso(at), "counts": c} for at, c in zip(instants, points, strict=True)]
    return web.json_response({"tenant": tenant, "model": model, "stages": list(MODEL_STAGES[model]), "points": shown})


# --- the page ----------------------------------------------------------------------------------
WEB = Path(__file__).resolve().parent / "web"
STATIC = {
    "app.js": (WEB / "app.js", "text/javascript"),
    "style.css": (WEB / "style.css", "text/css"),
    "echarts.min.js": (WEB / "node_modules" / "echarts" / "dist" / "echarts.min.js", "text/javascript"),
    "echarts-LICENSE": (WEB / "node_modules" / "echarts" / "LICENSE", "text/plain"),
}


async def page(request: web.Request) -> web.FileResponse:
    """The marketers' page (plain HTML and JS; the key is typed in it, not in the address)."""
    return web.FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.StreamResponse:
    found = STATIC.get(request.match_info["file"])
    if found is None:
        raise web.HTTPNotFound()
    path, kind = found
    if not path.exists():  # the chart library comes with `make setup` (npm ci)
        raise web.HTTPNotFound(text=f"{path.name} is not installed: run `make setup`")
    return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})


async def info(request: web.Request) -> web.Response:
    """What the page needs to start: the models and their stages, the attributes, the saved
    audiences and how far the tenant's history goes (its latest transition time and the time up
    to which every shard is complete)."""
    tenant = await _tenant(request)
    redis = request.app[REDIS]
    latest, watermark = tenant_clock(await read_clocks(redis, query.CLOCK), tenant)
    return web.json_response({
        "tenant": tenant,
        "models": {m: list(s) for m, s in MODEL_STAGES.items()},
        "attributes": list(ATTRIBUTES),
        "follow_targets": list(FOLLOW_TARGETS),
        "latest": iso(latest) if latest else None,
        "complete_until": iso(watermark) if watermark else None,
    })  # fmt: skip


async def campaign_results(request: web.Request) -> web.Response:
    """Each campaign against its control group: the latest readout attribution published
    (every trial, and the final ones alone), by campaign id."""
    tenant = await _tenant(request)
    raw = await _per_shard(request.app[REDIS], tenant, keys.campaign_results_key)
    return web.json_response({"tenant": tenant, "campaigns": [json.loads(v) for _, v in sorted(raw.items())]})


async def _per_shard(redis: Any, tenant: str, key: Callable[[str, int], str]) -> dict[bytes, bytes]:
    """The hashes `key(tenant, shard)` of the tenant's shards, as one (their fields never meet)."""
    shards = await tenant_shards(redis, tenant)
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hgetall(key(tenant, shard))
        found = await pipe.execute()
    return {k: v for each in found for k, v in each.items()}


async def create_campaign(request: web.Request) -> web.Response:
    """Schedule a campaign (`services.analytics.campaigns.CampaignSpec` as JSON): its audience an
    expression of stages and behaviours (saved audiences named in it are copied in as they are
    now), 201 with
    what was saved and its next runs."""
    tenant = await _tenant(request, with_data=False)
    try:
        checked_tenant(tenant)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    try:
        body = await request.json()
    except ValueError:
        raise BadQuery("the body must be a JSON campaign") from None
    try:
        spec = CampaignSpec.model_validate(body)
    except ValidationError as exc:
        raise BadQuery("; ".join(config_problem(".".join(str(p) for p in e["loc"]), e) for e in exc.errors())) from None
    audience = await query.Audiences(request.app[REDIS], tenant, _NOW, 1).inline(parse(spec.audience))
    kinds = {t.kind for t in terms(audience)}
    if not kinds <= {*MODEL_STAGES, *BEHAVIOURS}:
        raise BadQuery(
            "a campaign's audience is an expression of stages (model:stage) and behaviours (paid_orders_<N>d, "
            "category:<id> browsed <N>d), for now: attributes and follows are kept as they arrive, so a run's "
            "members would depend on the data's pace"
        )
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    keep = settings.analytics_behaviour_days
    for term in terms(audience):
        if term.kind in BEHAVIOURS and term.days > keep:
            raise ExpressionError(f"{term}: a campaign's windows must fit in the {keep} days of behaviour kept",
                                  term.position)  # fmt: skip
    spec = spec.model_copy(update={"audience": str(audience)})
    _, watermark = tenant_clock(await read_clocks(redis, query.CLOCK), tenant)
    due = runs(spec, -1, watermark)  # runs the tenant's time has passed fire at once: answerable now?
    for at in due[:1] + due[-1:]:
        await query.Audiences(redis, tenant, at, settings.partitions, settings.analytics_snapshot_every,
                              keep_days=keep).count(audience)  # fmt: skip
    await redis.hset(keys.campaign_specs_key(tenant), spec.name, spec.model_dump_json())
    upcoming = [iso(at) for at in runs(spec, watermark, MAX_TIME_MS)[:5]]
    return web.json_response({"tenant": tenant, **spec.model_dump(mode="json"), "next_runs": upcoming}, status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    """The tenant's scheduled campaigns, each with the runs that could not be answered."""
    tenant = await _tenant(request, with_data=False)
    redis = request.app[REDIS]
    raw: dict[Any, Any] = await redis.hgetall(keys.campaign_specs_key(tenant))
    failures = await _per_shard(redis, tenant, keys.campaign_failures_key)
    failed: dict[str, list[dict[str, Any]]] = {}
    for field, reason in sorted(failures.items()):
        name, at, shard = field.decode().rsplit("|", 2)
        failed.setdefault(name, []).append({"run": iso(int(at)), "shard": int(shard), "reason": reason.decode()})
    shown = [{**(c := json.loads(v)), "failed_runs": failed.get(c["name"], [])} for _, v in sorted(raw.items())]
    return web.json_response({"tenant": tenant, "campaigns": shown})


async def delete_campaign(request: web.Request) -> web.Response:
    """Unschedule campaign `{name}`: no further run fires (what ran stays on Kafka); 404 if none."""
    tenant = await _tenant(request, with_data=False)
    name = request.match_info["name"]
    if not await request.app[REDIS].hdel(keys.campaign_specs_key(tenant), name):
        return web.json_response({"error": f"no campaign {name[:64]!r}"}, status=404)
    return web.json_response({"tenant": tenant, "deleted": name})


# --- audiences ---------------------------------------------------------------------------------


def _audiences(request: web.Request, tenant: str) -> query.Audiences:
    settings = request.app[SETTINGS]
    return query.Audiences(request.app[REDIS], tenant, _instant(request, "at", _NOW), settings.partitions,
                           settings.analytics_snapshot_every, keep_days=settings.analytics_behaviour_days)  # fmt: skip


def _expression(request: web.Request, name: str = "expression") -> Node:
    """The audience of the path (`{name}`: a saved one) or of the query parameter `name`."""
    saved = request.match_info.get("name")
    if saved is not None:
        return parse(f"audience:{saved}") if AUDIENCE_NAME.fullmatch(saved) else _no_such(saved)
    text = request.query.get(name)
    if text is None:
        raise BadQuery(f"missing parameter `{name}` (an audience expression, e.g. aipl:I & follow:brand)")
    return parse(text)


def _no_such(name: str) -> Node:
    raise BadQuery(f"no saved audience {name[:64]!r}")


async def list_audiences(request: web.Request) -> web.Response:
    """Every saved audience of the tenant: name, expression, when saved."""
    tenant = await _tenant(request)
    raw: dict[Any, Any] = await request.app[REDIS].hgetall(keys.audiences_key(tenant))
    saved = [{"name": k.decode(), **json.loads(v)} for k, v in sorted(raw.items())]
    return web.json_response({"tenant": tenant, "audiences": saved})


async def save_audience(request: web.Request) -> web.Response:
    """Save `{"name": ..., "expression": ...}` (replacing one of the same name); 201 with its count now."""
    tenant = await _tenant(request)
    try:
        body = await request.json()
    except ValueError:
        raise BadQuery('the body must be JSON: {"name": ..., "expression": ...}') from None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("name"), str)
        or not isinstance(body.get("expression"), str)
    ):
        raise BadQuery('the body must be {"name": "...", "expression": "..."}')
    try:
        saved = await _audiences(request, tenant).save(body["name"], body["expression"])
    except ValueError as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise BadQuery(str(exc)) from None
    return web.json_response({"tenant": tenant, **saved}, status=201)


async def audience_count(request: web.Request) -> web.Response:
    """The customers of an expression (`?expression=`) or of a saved audience, now or `at`."""
    tenant = await _tenant(request)
    tree = _expression(request)
    count = await _audiences(request, tenant).count(tree)
    shown = iso(_instant(request, "at", _NOW)) if "at" in request.query else None
    return web.json_response({"tenant": tenant, "expression": str(tree), "at": shown, "count": count})


async def audience_export(request: web.Request) -> web.StreamResponse:
    """Every customer of the audience, streamed as CSV or NDJSON (`format`), with `tags`: the
    saved audiences (of those listed, comma-separated) each customer is also in."""
    tenant = await _tenant(request)
    tree = _expression(request)
    fmt = request.query.get("format", "csv")
    if fmt not in EXPORT_FORMATS:
        raise BadQuery(f"parameter `format`: one of {', '.join(EXPORT_FORMATS)}")
    tags = [t for t in request.query.get("tags", "").split(",") if t]
    audiences = _audiences(request, tenant)
    rows = audiences.export(tree, fmt, tags)
    first = await anext(rows)  # the audiences it names exist (a 400 comes before any byte)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
        "Content-Disposition": f'attachment; filename="{re.sub(r"[^A-Za-z0-9._-]", "_", tenant)}-audience.{fmt}"',
    })  # fmt: skip
    await response.prepare(request)
    await response.write(first.encode())
    async for chunk in rows:
        await response.write(chunk.encode())
    await response.write_eof()
    return response


async def audience_crossing(request: web.Request) -> web.Response:
    """Within the audience: customers by (`rows` value, `cols` value), each a profile attribute
    or a model (its stages at the instant)."""
    tenant = await _tenant(request)
    tree = _expression(request)
    dims = []
    for param in ("rows", "cols"):
        name = request.query.get(param)
        if name not in (*ATTRIBUTES, *MODEL_STAGES):
            raise BadQuery(f"parameter `{param}`: one of {', '.join((*ATTRIBUTES, *MODEL_STAGES))}")
        dims.append(name)
    audiences = _audiences(request, tenant)
    within = await audiences.members(tree)
    rows, cols = await audiences.dimension(dims[0]), await audiences.dimension(dims[1])
    cells = [[sum(len(within[s] & r[s] & c[s]) for s in range(len(within))) for c in cols.values()]
             for r in rows.values()]  # fmt: skip
    return web.json_response({"tenant": tenant, "expression": str(tree),
                              "rows": {"name": dims[0], "values": list(rows)},
                              "cols": {"name": dims[1], "values": list(cols)}, "cells": cells,
                              "total": sum(len(b) for b in within)})  # fmt: skip


async def audience_overlap(request: web.Request) -> web.Response:
    """Two audiences (`a`, `b`: expressions): customers in a only, b only, both, either."""
    tenant = await _tenant(request)
    a, b = _expression(request, "a"), _expression(request, "b")
    audiences = _audiences(request, tenant)
    left, right = await audiences.members(a), await audiences.members(b)
    both = sum(len(x & y) for x, y in zip(left, right, strict=True))
    in_a, in_b = sum(len(x) for x in left), sum(len(y) for y in right)
    return web.json_response({"tenant": tenant, "a": str(a), "b": str(b), "a_only": in_a - both,
                              "b_only": in_b - both, "both": both, "either": in_a + in_b - both})  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    """200 while Redis answers, 503 otherwise."""
    try:
        ok = bool(await request.app[REDIS].ping())
    except Exception:  # noqa: BLE001 - any failure to answer is 'not healthy'
        ok = False
    return web.json_response({"status": "ok" if ok else "degraded", "redis": ok}, status=200 if ok else 503)


def main() -> None:
    try:
        settings = load_settings(AnalyticsSettings)
        app = create_app(settings)
    except (ConfigError, ValueError) as exc:
        sys.exit(f"analytics api: {exc}")
    logging.basicConfig(level=settings.logging_level())
    web.run_app(app, host=settings.analytics_host, port=settings.analytics_port, print=None)


if __name__ == "__main__":
    main()
