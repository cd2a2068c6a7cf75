"""What the triggers decided for a tenant, read back from the trigger topics."""

from __future__ import annotations

from collections import Counter

from services.common.avro import default_codec
from services.common.constants import (
    TOPIC_TRIGGERS_COUPONS,
    TOPIC_TRIGGERS_OUTREACH,
    TOPIC_TRIGGERS_REMINDERS,
    TOPIC_TRIGGERS_SUPPRESSED,
)
from services.common.tail import read_topic

__all__ = ["TRIGGER_TOPICS", "decision_counts"]

TRIGGER_TOPICS = (TOPIC_TRIGGERS_COUPONS, TOPIC_TRIGGERS_REMINDERS, TOPIC_TRIGGERS_OUTREACH, TOPIC_TRIGGERS_SUPPRESSED)


async def decision_counts(bootstrap: str, tenant: str) -> Counter[tuple[str, str]]:
    """(rule, "sent" or "suppressed: <reason>") -> number of decisions on the trigger topics."""
    codec = default_codec()
    counts: Counter[tuple[str, str]] = Counter()
    for topic in TRIGGER_TOPICS:
        async for record in read_topic(bootstrap, topic, codec, idle_timeout=1.0):
            if record.get("tenant") == tenant:
                outcome = f"suppressed: {record['suppressed']}" if record["suppressed"] else "sent"
                counts[(record["rule"], outcome)] += 1
    return counts
