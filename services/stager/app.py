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
from services.common.faustapp import KafkaClients, faust_app, serve_engine
from services.common.redisbatch import connect
from services.common.resilience import Health
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
    registry = registry if registry is not None else CollectorRegistry()
    app = faust_app(
        settings.stager_group,
        settings.kafka_bootstrap,
        settings.stager_web_host,
        settings.stager_web_port,
        settings.batch_max,
        settings.state_dir / "faust",
    )
    redis = connect(settings.redis_url)
    kafka = KafkaClients()
    engine = Engine(
        redis=redis,
        send=kafka.send,
        codec=default_codec(),
        rules=rules,
        settings=settings,
        metrics=StagerMetrics(registry),
        shards=lambda: kafka.owned(EVENT_SOURCE_TOPICS),
        send_many=kafka.send_many,
        send_to=kafka.send_to,
    )
    serve_engine(app, engine=engine, clients=kafka, consumer_group=f"{settings.stager_group}-events",
                 topics=SOURCE_TOPICS, settings=settings, health=Health("stager"), redis=redis,
                 registry=registry)  # fmt: skip
    return app
