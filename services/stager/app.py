"""The stager as a Faust app: event topics in, customer stages in Redis, transitions out.

The input topics are read by the shared batch loop (`services.common.batchloop`: aiokafka
`getmany` batches, positions from the applied-offset fence); Faust runs the timers and the
health and metrics pages.
"""

from __future__ import annotations

import faust
from prometheus_client import CollectorRegistry

from services.common.avro import default_codec
from services.common.constants import EVENT_TYPES, TOPIC_REFERRALS, event_topic
from services.common.faustapp import engine_app
from services.stager.config import StageRules
from services.stager.engine import Engine
from services.stager.metrics import StagerMetrics
from services.stager.settings import StagerSettings

__all__ = ["EVENT_SOURCE_TOPICS", "SOURCE_TOPICS", "create_app"]

# Profile events carry attributes and consent, which no stage rule reads.
EVENT_SOURCE_TOPICS: tuple[str, ...] = tuple(event_topic(t) for t in EVENT_TYPES if t != "profile")
SOURCE_TOPICS: tuple[str, ...] = (*EVENT_SOURCE_TOPICS, TOPIC_REFERRALS)


def create_app(settings: StagerSettings, rules: StageRules, registry: CollectorRegistry | None = None) -> faust.App:
    """A Faust app whose task feeds event batches to one Engine and whose timer fires its timers."""
    return engine_app(
        "stager",
        settings,
        SOURCE_TOPICS,
        lambda redis, kafka, metrics: Engine(
            redis=redis,
            send=kafka.send,
            codec=default_codec(),
            rules=rules,
            settings=settings,
            metrics=StagerMetrics(metrics),
            shards=lambda: kafka.owned(EVENT_SOURCE_TOPICS),
            send_many=kafka.send_many,
            send_to=kafka.send_to,
        ),
        registry,
    )
