"""Idempotent creation of every topic in the topic table, with explicit partition counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.metadata import MetadataRequest

from services.common.constants import TOPICS, TopicSpec
from services.common.errors import StackError

__all__ = ["ensure_topics"]


async def _visible(admin: AIOKafkaAdminClient, wanted: dict[str, int], timeout: float = 60.0) -> None:
    """Until every broker shows every topic of `wanted` with all its partitions, each with a
    leader: on a cluster the metadata of a new topic reaches the brokers a moment after it is
    created, and a client asks whichever broker it likes."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = [b.nodeId for b in admin._client.cluster.brokers()] or [None]
        seen = True
        for node in nodes:
            request = MetadataRequest(list(wanted))
            reply = await (admin._send_request(request) if node is None else admin._send_request_to_node(node, request))
            found = {t["topic"]: t for t in reply.to_object()["topics"] if not t.get("error_code")}
            seen = (
                seen
                and set(found) >= set(wanted)
                and all(
                    len(found[n]["partitions"]) == count and all(p["leader"] >= 0 for p in found[n]["partitions"])
                    for n, count in wanted.items()
                )
            )
        if seen:
            return
        if time.monotonic() > deadline:
            raise StackError(f"the new topics did not show all their partitions within {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec] = TOPICS, partitions: int | None = None, replication: int = 1
) -> dict[str, str]:
    """Create missing topics; returns name -> "created" | "exists (N partitions)".

    `partitions` overrides every spec's count. An existing topic with a different count is
    reported, not altered: changing it would move customers between partitions. With
    `replication` of 3 or more, a write needs two in-sync replicas (`min.insync.replicas=2`).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = await admin.describe_topics()
        have = {t["topic"]: len(t["partitions"]) for t in existing if not t.get("error_code")}
        wanted = list(specs)
        missing = [
            NewTopic(
                s.name,
                num_partitions=partitions or s.partitions,
                replication_factor=replication,
                topic_configs={"min.insync.replicas": "2"} if replication >= 3 else {},
            )  # fmt: skip
            for s in wanted
            if s.name not in have
        ]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=15000)
            for name, code, *_ in response.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
                    raise StackError(f"creating topic {name} failed with Kafka error code {code}")
            await _visible(admin, {t.name: t.num_partitions for t in missing})
        result = {}
        for spec in wanted:
            result[spec.name] = f"exists ({have[spec.name]} partitions)" if spec.name in have else "created"
        return result
    finally:
        await admin.close()
