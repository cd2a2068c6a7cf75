"""Prometheus helpers: every metric carries the `crm_` prefix and lives in an injectable registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["LATENCY_BUCKETS", "PREFIX", "LoopMetrics", "metrics_handler"]

PREFIX = "crm_"
# seconds from an event's acceptance to what it caused being on Kafka
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """aiohttp handler serving `registry` in the Prometheus text format."""

    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


class LoopMetrics:
    """What the shared loop of a stream service counts, named `crm_<service>_...`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        *,
        late: str = "late_inputs",
        timers: str = "timers_fired",
        timers_help: str = "Customers whose due timers were fired",
    ) -> None:
        """`late` and `timers` name the late-input and timer counters of `service`."""
        name = f"{PREFIX}{service}_"
        self.registry = registry
        self.redelivered = Counter(
            f"{name}redelivered_messages", "Messages skipped because their effects were already applied",
            registry=registry,
        )  # fmt: skip
        self.repeats = Counter(
            f"{name}repeated_events", "Events recognised as applied before (a repeat changes nothing)",
            registry=registry,
        )  # fmt: skip
        self.late = Counter(f"{name}{late}", "Inputs read after the watermark had passed them", registry=registry)
        self.invalid = Counter(f"{name}invalid_messages", "Messages sent to the DLQ", registry=registry)
        self.timers_fired = Counter(f"{name}{timers}", timers_help, registry=registry)
        self.conflicts = Counter(
            f"{name}write_conflicts",
            "Batches decided again because another worker wrote one of their customers first",
            registry=registry,
        )
        self.watermark = Gauge(f"{name}watermark_seconds", "Event-time watermark", ["tenant"], registry=registry)
        self.batch = Histogram(
            f"{name}batch_duration_seconds",
            "Time to apply one batch",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
