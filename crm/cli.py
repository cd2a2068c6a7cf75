"""`crm`: one entry point for operating the engine (stack, topics, ingest, tail, demo)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from services.common.constants import MAX_TIME_MS
from services.common.errors import CrmError
from services.common.settings import CommonSettings, load_settings
from services.stager.rules import MODELS

__all__ = ["main"]

T = TypeVar("T")


def _common() -> CommonSettings:
    return load_settings(CommonSettings)


def _ride_out(make: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine (`make()` builds a fresh one), waiting out a Kafka or Redis
    outage with backoff for up to CRM_OUTAGE_WAIT_SECONDS; then the outage is raised and `main`
    names it in one line."""
    from services.common.resilience import Health, retry

    wait = _common().outage_wait_seconds
    return asyncio.run(retry(make, Health("crm"), give_up_after=wait))


@click.group()
def cli() -> None:
    """Streaming CRM engine: operate the local stack and the services."""


# --- stack -------------------------------------------------------------------------------------
@cli.group()
def stack() -> None:
    """The local Kafka + Redis stack (no Docker needed)."""


_CLUSTER = click.option(
    "--cluster",
    is_flag=True,
    help="Three Kafka brokers and a Redis Cluster of six nodes (state under <state dir>/cluster).",
)


def _local_stack(cluster: bool) -> Any:
    from crm.localstack import ClusterStack, LocalStack

    settings = _common()
    if not cluster:
        return LocalStack(settings)
    return ClusterStack(settings.model_copy(update={"state_dir": settings.state_dir / "cluster"}))


@stack.command("up")
@click.option("--topics/--no-topics", default=True, help="Also create the topic table.")
@click.option("--timeout", default=120.0, show_default=True)
@_CLUSTER
def stack_up(topics: bool, timeout: float, cluster: bool) -> None:
    """Start Kafka (KRaft) and Redis on loopback, wait until they answer; idempotent."""
    from services.common.topics import ensure_topics

    local = _local_stack(cluster)
    local.up(timeout if not cluster else max(timeout, 180.0))
    bootstrap, replication = (local.bootstrap, local.brokers) if cluster else (local.settings.kafka_bootstrap, 1)
    if topics:
        result = asyncio.run(ensure_topics(bootstrap, replication=replication))
        created = [name for name, state in result.items() if state == "created"]
        click.echo(f"topics: {len(result)} in the table, {len(created)} created")
    if cluster:
        click.echo("services, the CLI and the benchmark use it with:")
        for name, value in local.environment().items():
            click.echo(f"  export {name}={value}")


@stack.command("down")
@_CLUSTER
def stack_down(cluster: bool) -> None:
    """Stop every process this checkout started (services, Kafka, Redis)."""
    stopped = _local_stack(cluster).down()
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@_CLUSTER
def stack_status(cluster: bool) -> None:
    """Show what runs; exits 1 unless Kafka and Redis both answer."""
    local = _local_stack(cluster)
    for name, state in local.status().items():
        click.echo(f"{name:10} {state}")
    sys.exit(0 if local.kafka_ready() and local.redis_ready() else 1)


@cli.group()
def topics() -> None:
    """The topic table."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Override every topic's partition count.")
def topics_create(partitions: int | None) -> None:
    """Create every missing topic of the table (idempotent)."""
    from services.common.topics import ensure_topics

    result = _ride_out(
        lambda: ensure_topics(_common().kafka_bootstrap, partitions=partitions, replication=_common().kafka_replication)
    )
    for name, state in result.items():
        click.echo(f"{name:28} {state}")


@topics.command("list")
def topics_list() -> None:
    """Print the topic table."""
    from services.common.constants import TOPICS

    for spec in TOPICS:
        click.echo(f"{spec.name:28} {spec.partitions:3}  {spec.schema:28} {spec.description}")


# --- tail --------------------------------------------------------------------------------------
@cli.command()
@click.argument("topic")
@click.option("--max", "max_messages", type=int, default=None, help="Stop after N messages.")
def tail(topic: str, max_messages: int | None) -> None:
    """Decode TOPIC from the beginning to its current end as JSON lines."""
    from services.common.avro import default_codec
    from services.common.tail import read_topic, to_json

    printed = 0

    async def run() -> None:
        nonlocal printed
        try:
            async for record in read_topic(_common().kafka_bootstrap, topic, default_codec(), max_messages):
                click.echo(to_json(record))
                printed += 1
        except Exception as exc:
            if printed:  # starting again would print the same records twice
                raise CrmError(f"reading {topic} stopped after {printed} records: {type(exc).__name__}: {exc}") from exc
            raise

    _ride_out(run)


# --- ingest ------------------------------------------------------------------------------------
@cli.group()
def ingest() -> None:
    """The ingest service and bulk loads."""


@ingest.command("serve")
def ingest_serve() -> None:
    """Run the ingest HTTP service (same as `python -m services.ingest`)."""
    from services.ingest.__main__ import main as serve

    serve()


@ingest.command("file")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["ndjson"]), default="ndjson", show_default=True)
@click.option("--batch", default=1000, show_default=True)
def ingest_file(path: Path, fmt: str, batch: int) -> None:
    """Validate and produce every event of PATH through the ingest path, with a progress bar."""
    from prometheus_client import CollectorRegistry
    from tqdm import tqdm

    from services.common.avro import default_codec
    from services.ingest.core import Ingestor, make_producer
    from services.ingest.metrics import IngestMetrics
    from services.ingest.validate import Limits, split_body

    settings = _common()

    async def run() -> Counter[str]:
        producer = make_producer(settings.kafka_bootstrap)
        await producer.start()
        ingestor = Ingestor(default_codec(), producer, IngestMetrics(CollectorRegistry()), Limits())
        tally: Counter[str] = Counter()
        try:
            with (
                path.open("rb") as fh,
                tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None) as bar,
            ):
                lines: list[bytes] = []
                for line in fh:
                    lines.append(line)
                    bar.update(len(line))
                    if len(lines) >= batch:
                        _tally(tally, await ingestor.ingest(split_body(b"\n".join(lines)), f"file:{path.name}"))
                        lines = []
                if lines:
                    _tally(tally, await ingestor.ingest(split_body(b"\n".join(lines)), f"file:{path.name}"))
        finally:
            await producer.stop()
        return tally

    tally = asyncio.run(run())
    click.echo(f"accepted {tally['accepted']}, rejected {tally['rejected']} (to crm.events.dlq)")
    for key, count in sorted(tally.items()):
        if key.startswith("reason "):
            click.echo(f"  {key[7:]}: {count}")


def _tally(tally: Counter[str], results: list[Any]) -> None:
    for r in results:
        tally["accepted" if r.accepted else "rejected"] += 1
        if not r.accepted:
            tally["reason " + r.reason.split(":")[0]] += 1


# --- stager ------------------------------------------------------------------------------------
@cli.group()
def stager() -> None:
    """The stager service."""


@stager.command("worker")
def stager_worker() -> None:
    """Run a stager worker (same as `python -m services.stager`)."""
    from services.stager.__main__ import main as run

    run()


# --- triggers ----------------------------------------------------------------------------------
@cli.group()
def triggers() -> None:
    """The triggers service."""


@triggers.command("worker")
def triggers_worker() -> None:
    """Run a triggers worker (same as `python -m services.triggers`)."""
    from services.triggers.__main__ import main as run

    run()


@triggers.command("summary")
@click.option("--tenant", required=True)
@click.option("--json", "as_json", is_flag=True, help="An object of rule -> outcome -> count.")
def triggers_summary(tenant: str, as_json: bool) -> None:
    """Decisions of every rule for a tenant: sent, or suppressed and why."""
    from crm.report import decision_counts

    settings = load_settings(CommonSettings)
    counts = _ride_out(lambda: decision_counts(settings.kafka_bootstrap, tenant))
    _print_decisions(counts, as_json)


def _print_decisions(counts: Counter[tuple[str, str]], as_json: bool, indent: str = "") -> None:
    table: dict[str, dict[str, int]] = {}
    for (rule, outcome), n in sorted(counts.items()):
        table.setdefault(rule, {})[outcome] = n
    if as_json:
        click.echo(json.dumps(table))
        return
    for rule, outcomes in table.items():
        click.echo(f"{indent}{rule:24} " + ", ".join(f"{o} {n}" for o, n in outcomes.items()))


@triggers.command("rules")
def triggers_rules() -> None:
    """Print the rule table and guardrails in effect (defaults plus CRM_TRIGGER_RULES_FILE)."""
    from services.triggers.config import load_trigger_config
    from services.triggers.settings import TriggerSettings

    settings = load_settings(TriggerSettings)
    config = load_trigger_config(settings.trigger_rules_file)
    for r in config.rules:
        when = f"{r.model} -> {r.to}" if r.on == "transition" else r.on
        offer = f"{r.offer.kind} {r.offer.value:g}" if r.offer else "-"
        state = "" if r.enabled else "  (disabled)"
        if r.fatigue:
            state += f"  fatigue {r.fatigue} in {r.fatigue_window_days}d"
        click.echo(
            f"{r.name:24} {when:28} {r.action:24} {r.channel:6} {r.topic:9} {offer:10} "
            f"delay {r.delay_seconds:g}s quiet {r.quiet_hours}{state}"
        )
    click.echo(json.dumps(config.guardrails.model_dump(mode="json")))


# --- attribution -------------------------------------------------------------------------------
@cli.group()
def attribution() -> None:
    """The attribution service."""


@attribution.command("worker")
def attribution_worker() -> None:
    """Run an attribution worker (same as `python -m services.attribution`)."""
    from services.attribution.__main__ import main as run

    run()


# --- analytics ---------------------------------------------------------------------------------
@cli.group()
def analytics() -> None:
    """The analytics service: the stage-history worker and the HTTP API for marketers."""


@analytics.command("worker")
def analytics_worker() -> None:
    """Run a stage-history worker (same as `python -m services.analytics`)."""
    from services.analytics.__main__ import main as run

    run()


@analytics.command("api")
def analytics_api() -> None:
    """Run the analytics HTTP API (same as `python -m services.analytics.api`)."""
    from services.analytics.api import main as run

    run()


# --- audiences ---------------------------------------------------------------------------------
@cli.group()
def audiences() -> None:
    """Audiences: set expressions over stages, attributes, follows and behaviour (as the analytics API)."""


def _audiences(tenant: str, at: str | None, redis: Any) -> Any:
    from services.analytics import query
    from services.analytics.settings import AnalyticsSettings

    settings = load_settings(AnalyticsSettings)
    instant = MAX_TIME_MS - 1 if at is None else _parse_instant(at)
    return query.Audiences(redis, tenant, instant, settings.partitions, settings.analytics_snapshot_every,
                           keep_days=settings.analytics_behaviour_days)  # fmt: skip


def _parsed(expression: str) -> Any:
    from services.analytics.audience import ExpressionError, parse

    try:
        return parse(expression)
    except ExpressionError as exc:
        raise click.BadParameter(f"{exc}\n  {expression}\n  {' ' * exc.position}^") from None


AT_OPTION = click.option("--at", "at", default=None, help="Stages at this instant (default: now).")


@audiences.command("count")
@click.argument("expression")
@click.option("--tenant", required=True)
@AT_OPTION
def audiences_count(expression: str, tenant: str, at: str | None) -> None:
    """How many customers EXPRESSION holds, e.g. 'aipl:I & follow:brand - lifecycle:churned'."""
    tree = _parsed(expression)

    async def run() -> int:
        redis = _redis()
        try:
            return int(await _audiences(tenant, at, redis).count(tree))
        finally:
            await redis.aclose()

    click.echo(_answered(run))


def _answered(run: Callable[[], Awaitable[T]]) -> T:
    """`_ride_out(run)`, a bad expression (a saved audience it names is missing) as a usage error."""
    try:
        return _ride_out(run)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@audiences.command("save")
@click.argument("name")
@click.argument("expression")
@click.option("--tenant", required=True)
def audiences_save(name: str, expression: str, tenant: str) -> None:
    """Save EXPRESSION as audience NAME (usable as audience:NAME)."""
    _parsed(expression)

    async def run() -> dict[str, Any]:
        redis = _redis()
        try:
            saved: dict[str, Any] = await _audiences(tenant, None, redis).save(name, expression)
            return saved
        finally:
            await redis.aclose()

    saved = _answered(run)
    click.echo(f"saved audience {saved['name']!r}: {saved['count']} customers now")


@audiences.command("list")
@click.option("--tenant", required=True)
def audiences_list(tenant: str) -> None:
    """The saved audiences of TENANT."""
    from services.common import keys

    async def run() -> dict[bytes, bytes]:
        redis = _redis()
        try:
            found: dict[bytes, bytes] = await redis.hgetall(keys.audiences_key(tenant))
            return found
        finally:
            await redis.aclose()

    for name, raw in sorted(_ride_out(run).items()):
        click.echo(f"{name.decode():24} {json.loads(raw)['expression']}")


@audiences.command("export")
@click.argument("expression")
@click.option("--tenant", required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "ndjson"]), default="csv", show_default=True)
@click.option("--tags", default="", help="Comma-separated saved audiences: which each customer is also in.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout).")
@AT_OPTION
def audiences_export(expression: str, tenant: str, fmt: str, tags: str, out: Path | None, at: str | None) -> None:
    """Every customer EXPRESSION holds, as CSV or NDJSON."""
    tree = _parsed(expression)

    part = None if out is None else out.with_name(out.name + ".part")  # renamed to `out` once complete

    async def run() -> int:
        redis = _redis()
        written = 0
        try:
            with open(part, "w", newline="") if part else contextlib.nullcontext(sys.stdout) as sink:
                rows = _audiences(tenant, at, redis).export(tree, fmt, [t for t in tags.split(",") if t])
                async for chunk in rows:
                    sink.write(chunk)
                    written += chunk.count("\n")
                sink.flush()
            return written - (fmt == "csv")
        except BrokenPipeError:  # the reader stopped (`| head`): nothing more to write
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return -1
        finally:
            await redis.aclose()

    try:
        count = _answered(run)
    except BaseException:  # a failed export leaves no file behind
        if part is not None:
            part.unlink(missing_ok=True)
        raise
    if part is not None and out is not None:
        part.replace(out)
        click.echo(f"wrote {count} customers to {out}")


# --- campaigns ---------------------------------------------------------------------------------
@cli.group()
def campaigns() -> None:
    """Scheduled campaigns (member day, member week), through the analytics API."""


def _api(method: str, path: str, body: Any = None) -> Any:
    """A call of the analytics API named by CRM_ANALYTICS_URL and CRM_ANALYTICS_KEY."""
    base = os.environ.get("CRM_ANALYTICS_URL", "http://127.0.0.1:8090")
    key = os.environ.get("CRM_ANALYTICS_KEY", "")
    if not key:
        raise CrmError("set CRM_ANALYTICS_KEY to an API key of the analytics service (CRM_ANALYTICS_API_KEYS)")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        said = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise CrmError(f"the analytics API answered {exc.code}: {said}") from None
    except urllib.error.URLError as exc:
        raise CrmError(
            f"the analytics API at {base} does not answer ({exc.reason}); start it: crm analytics api"
        ) from None


@campaigns.command("create")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", required=True)
def campaigns_create(spec: Path, tenant: str) -> None:
    """Schedule the campaign of the JSON file SPEC: name, audience (stages), action, channel,
    topic, offer, quiet_hours, and `at` (once) or `weekly` (day, hour, timezone, start, until)."""
    body = _api("POST", f"/v1/{tenant}/campaigns", json.loads(spec.read_text()))
    click.echo(
        f"scheduled {body['name']!r} for {body['audience']}; next runs: {', '.join(body['next_runs']) or 'none'}"
    )


@campaigns.command("delete")
@click.argument("name")
@click.option("--tenant", required=True)
def campaigns_delete(name: str, tenant: str) -> None:
    """Unschedule campaign NAME of TENANT: no further run fires."""
    _api("DELETE", f"/v1/{tenant}/campaigns/{urllib.parse.quote(name, safe='')}")
    click.echo(f"campaign {name!r} of tenant {tenant!r} deleted")


@campaigns.command("list")
@click.option("--tenant", required=True)
def campaigns_list(tenant: str) -> None:
    """The scheduled campaigns of TENANT."""
    for c in _api("GET", f"/v1/{tenant}/campaigns")["campaigns"]:
        when = c["at"] or f"every {c['weekly']['day']} {c['weekly']['hour']:02d}:{c['weekly']['minute']:02d}"
        click.echo(f"{c['name']:24} {when:26} {c['action']:22} {c['channel']:6} {c['audience']}")
        for failed in c.get("failed_runs", []):
            click.echo(f"  run of {failed['run']} on shard {failed['shard']} failed: {failed['reason']}")


@cli.group()
def report() -> None:
    """Reports for marketers."""


@report.command("campaigns")
@click.option("--tenant", required=True)
@click.option("--json", "as_json", is_flag=True, help="A list of one object per campaign.")
@click.option("--final-only", is_flag=True, help="Only trials whose attribution window has ended.")
def report_campaigns(tenant: str, as_json: bool, final_only: bool) -> None:
    """What each campaign produced against its control group: conversion, uplift with its 95%
    interval, incremental revenue, cost and ROI."""
    from crm.report import campaign_readouts, campaign_table

    async def run() -> list[Any]:
        redis = _redis()
        try:
            return await campaign_readouts(redis, tenant, final_only=final_only)
        finally:
            await redis.aclose()

    readouts = _ride_out(run)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in readouts]))
    elif not readouts:
        click.echo(f"no campaign of tenant {tenant!r} has a trial yet")
    else:
        for line in campaign_table(readouts):
            click.echo(line)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["taobao", "cdnow", "online-retail", "ndjson"]), required=True)
@click.option("--tenant", required=True, help="Brand the events belong to.")
@click.option("--speed", type=float, default=None, help="Replay at N times the original pace.")
@click.option("--max", "as_fast", is_flag=True, help="As fast as possible (the default).")
@click.option("--wait/--no-wait", default=True, help="Return only once every stream service has applied everything.")
@click.option("--stager-only", is_flag=True, help="Wait for the stager alone (no other worker runs).")
@click.option("--no-attribution", is_flag=True, help="Do not wait for attribution (no attribution worker runs).")
@click.option("--no-analytics", is_flag=True, help="Do not wait for analytics (no history worker runs).")
@click.option("--force", is_flag=True, help="Replay even if this file was already replayed under the tenant.")
@click.option("--timeout", default=900.0, show_default=True)
def replay(
    path: Path,
    fmt: str,
    tenant: str,
    speed: float | None,
    as_fast: bool,
    wait: bool,
    stager_only: bool,
    no_attribution: bool,
    no_analytics: bool,
    force: bool,
    timeout: float,
) -> None:
    """Replay a dataset in event-time order through the ingest path, under TENANT."""
    from crm.replay import replay as run
    from services.stager.settings import StagerSettings

    settings = load_settings(StagerSettings)
    triggers, attribution, analytics = _downstream(stager_only, no_attribution, no_analytics)
    report = asyncio.run(run(settings, path, fmt, tenant, None if as_fast else speed, wait, force, timeout, click.echo,
                             triggers=triggers, attribution=attribution, analytics=analytics))  # fmt: skip
    if not report.skipped and wait:
        who = "the stager has" if stager_only else "every stream service has"
        click.echo(f"{who} applied all {report.accepted} events; clock at {_iso(report.latest_ms)}")


def _downstream(stager_only: bool, no_attribution: bool, no_analytics: bool) -> tuple[Any, Any, Any]:
    """The settings of the services to wait for after the stager (None: not waited for)."""
    from services.analytics.settings import AnalyticsSettings
    from services.attribution.settings import AttributionSettings
    from services.triggers.settings import TriggerSettings

    triggers = None if stager_only else load_settings(TriggerSettings)
    attribution = None if stager_only or no_attribution else load_settings(AttributionSettings)
    analytics = None if stager_only or no_analytics else load_settings(AnalyticsSettings)
    return triggers, attribution, analytics


@cli.command("migrate-keys")
def migrate_keys_cmd() -> None:
    """Rewrite Redis data of the earlier single-node key layout into the unit layout (every key of
    a tenant's shard under one hash tag), in place; stop every worker first. Idempotent. To move
    the data into a Redis Cluster afterwards: `redis-cli --cluster import <node> --cluster-from
    <this server> --cluster-copy`."""
    from crm.migrate import migrate_keys
    from services.analytics.settings import AnalyticsSettings
    from services.attribution.settings import AttributionSettings
    from services.stager.settings import StagerSettings
    from services.triggers.settings import TriggerSettings

    common = _common()
    if common.redis_cluster:
        raise CrmError("crm migrate-keys rewrites a single Redis server (CRM_REDIS_CLUSTER is set)")
    groups = {
        "stager": load_settings(StagerSettings).group,
        "triggers": load_settings(TriggerSettings).group,
        "attribution": load_settings(AttributionSettings).group,
        "analytics": load_settings(AnalyticsSettings).group,
    }

    async def run() -> None:
        redis = _redis()
        try:
            await migrate_keys(redis, groups, common.partitions, click.echo)
        finally:
            await redis.aclose()

    _ride_out(run)


@cli.command("wait")
@click.option("--tenant", required=True)
@click.option("--stager-only", is_flag=True, help="Wait for the stager alone (no other worker runs).")
@click.option("--no-attribution", is_flag=True, help="Do not wait for attribution (no attribution worker runs).")
@click.option("--no-analytics", is_flag=True, help="Do not wait for analytics (no history worker runs).")
@click.option("--timeout", default=900.0, show_default=True)
def wait_cmd(tenant: str, stager_only: bool, no_attribution: bool, no_analytics: bool, timeout: float) -> None:
    """Until every stream service has applied what is on its topics for TENANT and fired the
    timers due by the tenant's latest event time."""
    from crm.replay import wait_applied
    from services.common.clock import tenant_clock
    from services.common.units import read_clocks
    from services.stager.engine import CLOCK as STAGER_CLOCK
    from services.stager.settings import StagerSettings

    settings = load_settings(StagerSettings)
    triggers, attribution, analytics = _downstream(stager_only, no_attribution, no_analytics)

    async def run() -> int:
        redis = _redis()
        try:
            latest, _ = tenant_clock(await read_clocks(redis, STAGER_CLOCK), tenant)
            if not latest:
                raise CrmError(f"no event of tenant {tenant!r} has been applied")
            await wait_applied(settings, redis, tenant, latest, timeout, click.echo, triggers, attribution, analytics)
            return latest
        finally:
            await redis.aclose()

    latest = _ride_out(run)
    click.echo(f"tenant {tenant!r} is complete up to {_iso(latest)} in every service waited for")


@cli.group()
def stages() -> None:
    """Stage counts and flows (the dashboard's answers)."""


MODEL = click.Choice(MODELS)


@stages.command("counts")
@click.option("--model", type=MODEL, required=True)
@click.option("--tenant", required=True)
@click.option("--at", "at", default=None, help="Instant (1997-10-01T00:00:00Z, a date, or epoch ms); default: now.")
@click.option("--json", "as_json", is_flag=True)
def stages_counts(model: str, tenant: str, at: str | None, as_json: bool) -> None:
    """How many customers are in each stage of MODEL (now, or at an instant), from the stage
    history the analytics worker keeps."""
    from services.analytics import query
    from services.analytics.settings import AnalyticsSettings

    settings = load_settings(AnalyticsSettings)
    instant = MAX_TIME_MS - 1 if at is None else _parse_instant(at)

    async def run() -> dict[str, int]:
        redis = _redis()
        try:
            found = await query.counts(redis, tenant, model, instant, partitions=settings.partitions,
                                       snapshot_every=settings.analytics_snapshot_every)  # fmt: skip
            return {stage: n for stage, n in found.items() if n}
        finally:
            await redis.aclose()

    _print_counts(_ride_out(run), as_json)


@stages.command("flow")
@click.option("--model", type=MODEL, required=True)
@click.option("--tenant", required=True)
@click.option("--from", "from_", required=True, help="Start instant (ISO 8601, a date, or epoch ms).")
@click.option("--to", "to", required=True, help="End instant.")
@click.option("--json", "as_json", is_flag=True)
def stages_flow(model: str, tenant: str, from_: str, to: str, as_json: bool) -> None:
    """Customers whose stage at --from differs from their stage at --to, by "from->to"."""
    from services.analytics import query
    from services.analytics.settings import AnalyticsSettings

    settings = load_settings(AnalyticsSettings)
    t0, t1 = _parse_instant(from_), _parse_instant(to)
    if t1 < t0:
        raise click.BadParameter("--to is before --from")

    async def run() -> dict[str, int]:
        redis = _redis()
        try:
            found = await query.flow(redis, tenant, model, t0, t1, partitions=settings.partitions,
                                     snapshot_every=settings.analytics_snapshot_every)  # fmt: skip
            return {f"{a}->{b}": n for (a, b), n in sorted(found.cells.items()) if a != b}
        finally:
            await redis.aclose()

    _print_counts(_ride_out(run), as_json)


def _redis() -> Any:
    from services.common.redisbatch import connect

    return connect(_common().redis_url, _common().redis_cluster)


def _parse_instant(text: str) -> int:
    from services.common.times import parse_instant

    try:
        return parse_instant(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _print_counts(counts: dict[str, int], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(counts))
        return
    width = max((len(k) for k in counts), default=5)
    for stage, n in counts.items():
        click.echo(f"{stage:{width}}  {n:>9}")
    click.echo(f"{'total':{width}}  {sum(counts.values()):>9}")


# --- demo --------------------------------------------------------------------------------------
DEMO_KEY = "demo-local-key"


@cli.command()
@click.option("--customers", default=2000, show_default=True)
def demo(customers: int) -> None:
    """Start the stack and the services, push a demo stream over HTTP, print what happened."""
    from crm.demo import demo_stream
    from crm.localstack import LocalStack
    from services.analytics.settings import AnalyticsSettings
    from services.attribution.settings import AttributionSettings
    from services.common.avro import default_codec
    from services.common.tail import read_topic, to_json
    from services.common.topics import ensure_topics
    from services.stager.settings import StagerSettings
    from services.triggers.settings import TriggerSettings

    settings = load_settings(StagerSettings)
    local = LocalStack(settings)
    local.up()
    asyncio.run(ensure_topics(settings.kafka_bootstrap, replication=settings.kafka_replication))
    url = f"http://127.0.0.1:{settings.ingest_port}"
    _ensure_service("ingest", "services.ingest", url, {"CRM_API_KEYS": DEMO_KEY}, settings, local)
    stager_url = f"http://127.0.0.1:{settings.stager_web_port}"
    _ensure_service("stager", "services.stager", stager_url, {"CRM_LOG_LEVEL": "warn"}, settings, local)
    triggers_port = load_settings(TriggerSettings).triggers_web_port
    triggers_url = f"http://127.0.0.1:{triggers_port}"
    _ensure_service("triggers", "services.triggers", triggers_url, {"CRM_LOG_LEVEL": "warn"}, settings, local)
    attribution_port = load_settings(AttributionSettings).attribution_web_port
    attribution_url = f"http://127.0.0.1:{attribution_port}"
    _ensure_service("attribution", "services.attribution", attribution_url, {"CRM_LOG_LEVEL": "warn"}, settings,
                    local)  # fmt: skip
    analytics = load_settings(AnalyticsSettings)
    history_url = f"http://127.0.0.1:{analytics.analytics_web_port}"
    _ensure_service("analytics", "services.analytics", history_url, {"CRM_LOG_LEVEL": "warn"}, settings, local)
    api_url = f"http://127.0.0.1:{analytics.analytics_port}"
    api_env = {"CRM_LOG_LEVEL": "warn", "CRM_ANALYTICS_API_KEYS": f"{DEMO_KEY}:demo"}
    _ensure_service("analytics-api", "services.analytics.api", api_url, api_env, settings, local)

    from tqdm import tqdm

    lines = list(demo_stream(customers, int(time.time() * 1000) - 4 * 3600 * 1000))
    totals: Counter[str] = Counter()
    latest = 0
    for i in tqdm(range(0, len(lines), 500), desc="posting demo events", unit="batch", disable=None):
        reply = _post(f"{url}/v1/events", b"\n".join(lines[i : i + 500]))
        for r in reply["results"]:
            totals["accepted" if r["status"] == "accepted" else "rejected: " + r["reason"].split(":")[0]] += 1
            if r["status"] == "accepted":
                totals["topic " + r["topic"]] += 1
                latest = max(latest, json.loads(lines[i + r["index"]])["event_time"])
    click.echo(f"posted {len(lines)} items: {totals['accepted']} accepted")
    for key in sorted(totals):
        if key != "accepted":
            click.echo(f"  {key}: {totals[key]}")

    async def show_dlq() -> None:
        click.echo("first dead letters (crm tail crm.events.dlq):")
        async for record in read_topic(settings.kafka_bootstrap, "crm.events.dlq", default_codec(), 2):
            click.echo("  " + to_json({k: record[k] for k in ("topic", "reason", "source", "original")}))

    asyncio.run(show_dlq())
    asyncio.run(_show_stages(settings, latest))
    asyncio.run(_show_triggers(settings))
    asyncio.run(_show_campaigns())
    click.echo(f"metrics: {url}/metrics, {stager_url}/metrics, {triggers_url}/metrics, {attribution_url}/metrics, "
               f"{history_url}/metrics and {api_url}/metrics")  # fmt: skip
    click.echo(f"analytics page: {api_url}/?tenant=demo#key={DEMO_KEY}")
    click.echo(f"analytics API: {api_url}/v1/demo/stages/pyramid/counts (header X-API-Key: {DEMO_KEY})")
    click.echo("stop everything: .venv/bin/crm stack down")


async def _show_triggers(settings: Any, settle_seconds: float = 4.0, timeout: float = 120.0) -> None:
    """Print the demo tenant's trigger decisions once they stop changing."""
    from crm.report import decision_counts

    deadline = time.monotonic() + timeout
    last: Counter[tuple[str, str]] = Counter()
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        counts = await decision_counts(settings.kafka_bootstrap, "demo")
        if counts != last or not counts:
            last, steady_since = counts, time.monotonic()
        elif time.monotonic() - steady_since >= settle_seconds:
            break
        await asyncio.sleep(1.0)
    click.echo("trigger decisions for tenant 'demo' (crm triggers summary --tenant demo):")
    _print_decisions(last, False, "  ")


async def _show_campaigns() -> None:
    """Print the demo tenant's campaigns against their control groups."""
    from crm.report import campaign_readouts, campaign_table

    redis = _redis()
    try:
        readouts = await campaign_readouts(redis, "demo")
    finally:
        await redis.aclose()
    click.echo("campaigns of tenant 'demo' against their control groups (crm report campaigns --tenant demo):")
    for line in campaign_table(readouts) if readouts else ["no touch yet"]:
        click.echo("  " + line)


async def _show_stages(settings: Any, latest: int) -> None:
    from crm.replay import wait_applied
    from services.analytics import query
    from services.analytics.settings import AnalyticsSettings
    from services.attribution.settings import AttributionSettings
    from services.triggers.settings import TriggerSettings

    redis = _redis()
    try:
        await wait_applied(settings, redis, "demo", latest, 300, click.echo, load_settings(TriggerSettings),
                           load_settings(AttributionSettings), load_settings(AnalyticsSettings))  # fmt: skip
        click.echo(f"stages of tenant 'demo' (crm stages counts --tenant demo --model M), clock at {_iso(latest)}:")
        for model in MODELS:
            counts = await query.counts(redis, "demo", model, MAX_TIME_MS - 1, partitions=settings.partitions)
            click.echo(f"  {model:11} " + ", ".join(f"{stage} {n}" for stage, n in counts.items() if n))
    finally:
        await redis.aclose()


def _ensure_service(name: str, module: str, url: str, env: dict[str, str], settings: CommonSettings, local: Any) -> str:
    """Start `python -m module` for the demo unless `url`/healthz answers; returns `url`."""
    from crm.localstack import pid_alive

    pid_file = local.pid_file(name)
    if _healthy(url):
        click.echo(f"{name} already up on {url}")
        return url
    if pid_file.exists() and pid_alive(int(pid_file.read_text())):
        raise CrmError(f"{name} (pid {pid_file.read_text().strip()}) runs but does not answer on {url}")
    log = settings.state_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**_env(), **env},
        )
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 120
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CrmError(f"{name} did not start; see {log}")
        time.sleep(0.3)
    click.echo(f"{name} up on {url} (pid {proc.pid})")
    return url


def _env() -> dict[str, str]:
    return dict(os.environ)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _post(url: str, body: bytes) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"X-API-Key": DEMO_KEY, "Content-Type": "application/x-ndjson"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:  # 207/422 carry the per-event answer too
        if exc.code in (207, 422):
            return dict(json.loads(exc.read()))
        raise CrmError(f"ingest answered {exc.code}: {exc.read()[:300]!r}") from exc


def main() -> None:
    from services.common.resilience import OUTAGES, dependency_of

    try:
        cli(standalone_mode=True)
    except CrmError as exc:
        sys.exit(f"crm: {exc}")
    except OUTAGES as exc:
        waited = _common().outage_wait_seconds
        sys.exit(f"crm: {dependency_of(exc)} unreachable for {waited:g} s, giving up ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    main()
