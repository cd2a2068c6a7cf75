"""The ingest service's connection to Kafka: a producer started in the background, retried with a
bounded backoff, and a bounded-time reachability probe for `/healthz`.

The service answers from its first second: while Kafka is away, ingest requests get 503 with
every event `not_written` and `/healthz` says 503, instead of start-up failing or a request
hanging on a broker that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.ingest.core import make_producer

__all__ = ["KafkaLink"]

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0
HEALTH_CACHE_SECONDS = 1.0


class KafkaLink:
    def __init__(
        self,
        bootstrap: str,
        ack_timeout_seconds: float,
        on_ready: Callable[[AIOKafkaProducer], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_ready` receives the producer once it has connected."""
        self.bootstrap = bootstrap
        self.ack_timeout_seconds = ack_timeout_seconds
        self.probe_timeout = min(2.0, ack_timeout_seconds)
        self.on_ready = on_ready
        self.clock = clock
        self.producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._health: tuple[float, bool] | None = None  # (when probed, reachable)

    async def start(self) -> None:
        """Connect, trying once in the foreground (bounded by the ack timeout) and on failure again
        in the background; returns either way."""
        if not await self._attempt(announce=True):
            self._task = asyncio.create_task(self._connect(), name="ingest-kafka-connect")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()

    async def _connect(self) -> None:
        backoff = BACKOFF_FIRST_SECONDS
        while True:
            await asyncio.sleep(backoff)
            if await self._attempt(announce=False):
                log.info("Kafka at %s reachable; ingest producing", self.bootstrap)
                return
            backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)

    async def _attempt(self, announce: bool) -> bool:
        producer = make_producer(self.bootstrap, self.ack_timeout_seconds)
        try:
            async with asyncio.timeout(self.ack_timeout_seconds):
                await producer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            await producer.stop()
            if announce:  # one line, not one per attempt
                log.warning("Kafka at %s unreachable (%s); retrying in the background", self.bootstrap, exc)
            return False
        self.producer = producer
        self.on_ready(producer)
        return True

    async def reachable(self) -> bool:
        """Whether a broker answers a metadata request now (within `probe_timeout`); the answer is
        kept for a second so a busy health check does not load the cluster."""
        now = self.clock()
        if self._health is not None and now - self._health[0] < HEALTH_CACHE_SECONDS:
            return self._health[1]
        ok = await self._probe()
        self._health = (self.clock(), ok)
        return ok

    async def _probe(self) -> bool:
        if self.producer is None:
            return False
        try:
            async with asyncio.timeout(self.probe_timeout):
                # the cached metadata still lists a broker that is gone; ask one for fresh metadata
                await self.producer.client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError):
            return False
        return True
