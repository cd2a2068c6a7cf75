"""The history worker as a Faust app: stage transitions, profiles, follows, browses and orders in;
stage histories, attribute bitmaps and the behaviour index in Redis.

The input topics are read by the shared batch loop (`services.common.batchloop`); Faust runs
the ticks (which close days) and the health and metrics pages.
"""

from __future__ import annotations

import faust
from prometheus_client import CollectorRegistry

from services.analytics.engine import AnalyticsEngine
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.settings import AnalyticsSettings
from services.common.avro import default_codec
from services.common.constants import TOPIC_CAMPAIGN_READOUTS, TOPIC_STAGE_TRANSITIONS, event_topic
from services.common.faustapp import engine_app
from services.common.outbox import kafka_sent_since

__all__ = ["SOURCE_TOPICS", "create_app"]

# All keyed by customer with the same partition count: partition p of each holds the same
# customers, so one worker owns a shard's history, ids and attributes together. The campaign
# readouts (keyed by campaign) are kept as they come, for the campaign table.
SOURCE_TOPICS: tuple[str, ...] = (TOPIC_STAGE_TRANSITIONS, event_topic("profile"), event_topic("follow"),
                                  event_topic("browse"), event_topic("order"), TOPIC_CAMPAIGN_READOUTS)  # fmt: skip


def create_app(settings: AnalyticsSettings, registry: CollectorRegistry | None = None) -> faust.App:
    """A Faust app whose task feeds batches to one AnalyticsEngine and whose timer ticks it."""
    codec = default_codec()
    return engine_app(
        "analytics",
        settings,
        SOURCE_TOPICS,
        lambda redis, kafka, metrics: AnalyticsEngine(
            redis=redis,
            send=kafka.send,
            codec=codec,
            settings=settings,
            metrics=AnalyticsMetrics(metrics),
            sent_since=kafka_sent_since(settings.kafka_bootstrap, codec),
            shards=lambda: kafka.owned(SOURCE_TOPICS),
            send_to=kafka.send_to,
        ),
        registry,
    )
