"""The triggers worker as a Faust app: transitions and events in, decisions on trigger topics.

The input topics are read by the shared batch loop (`services.common.batchloop`: aiokafka
`getmany` batches, positions from the applied-offset fence); Faust runs the timers and the
health and metrics pages.
"""

from __future__ import annotations

import faust
from prometheus_client import CollectorRegistry

from services.common.avro import default_codec
from services.common.constants import TOPIC_CAMPAIGN_REQUESTS, TOPIC_STAGE_TRANSITIONS, event_topic
from services.common.faustapp import engine_app
from services.common.outbox import kafka_sent_since
from services.triggers.config import TriggerConfig
from services.triggers.engine import TriggerEngine
from services.triggers.metrics import TriggerMetrics
from services.triggers.settings import TriggerSettings

__all__ = ["SOURCE_TOPICS", "create_app"]


# All keyed by customer with the same partition count, so partition p of each holds the same
# customers and one worker owns a customer's timers, transitions and events together.
SOURCE_TOPICS: tuple[str, ...] = (
    TOPIC_STAGE_TRANSITIONS,
    event_topic("order"),
    event_topic("cart"),
    event_topic("profile"),
    TOPIC_CAMPAIGN_REQUESTS,
)


def create_app(
    settings: TriggerSettings, config: TriggerConfig, registry: CollectorRegistry | None = None
) -> faust.App:
    """A Faust app whose task feeds batches to one TriggerEngine and whose timer fires its timers."""
    codec = default_codec()
    return engine_app(
        "triggers",
        settings,
        SOURCE_TOPICS,
        lambda redis, kafka, metrics: TriggerEngine(
            redis=redis,
            send=kafka.send,
            codec=codec,
            config=config,
            settings=settings,
            metrics=TriggerMetrics(metrics),
            sent_since=kafka_sent_since(settings.kafka_bootstrap, codec),
            shards=lambda: kafka.owned(SOURCE_TOPICS),
            send_to=kafka.send_to,
        ),
        registry,
    )
