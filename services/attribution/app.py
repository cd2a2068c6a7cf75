"""The attribution worker as a Faust app: trigger decisions, orders and behaviour in, campaign
figures in Redis and attribution records out.

The input topics are read by the shared batch loop (`services.common.batchloop`); Faust runs the
timers and the health and metrics pages.
"""

from __future__ import annotations

import faust
from prometheus_client import CollectorRegistry

from services.attribution.config import AttributionConfig
from services.attribution.engine import AttributionEngine
from services.attribution.metrics import AttributionMetrics
from services.attribution.settings import AttributionSettings
from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
    event_topic,
)
from services.common.faustapp import engine_app
from services.common.outbox import kafka_sent_since

__all__ = ["SOURCE_TOPICS", "create_app"]

# All keyed by customer with the same partition count: partition p of each holds the same
# customers, so one worker owns a customer's touches, orders and behaviour together.
SOURCE_TOPICS: tuple[str, ...] = (
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_SUPPRESSED,
    event_topic("order"),
    event_topic("browse"),
    event_topic("cart"),
    event_topic("follow"),
)


def create_app(
    settings: AttributionSettings, config: AttributionConfig, registry: CollectorRegistry | None = None
) -> faust.App:
    """A Faust app whose task feeds batches to one AttributionEngine and whose timer fires its timers."""
    codec = default_codec()
    return engine_app(
        "attribution",
        settings,
        SOURCE_TOPICS,
        lambda redis, kafka, metrics: AttributionEngine(
            redis=redis,
            send=kafka.send,
            codec=codec,
            config=config,
            settings=settings,
            metrics=AttributionMetrics(metrics),
            sent_since=kafka_sent_since(settings.kafka_bootstrap, codec),
            shards=lambda: kafka.owned(SOURCE_TOPICS),
        ),
        registry,
    )
