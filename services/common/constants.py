"""Names shared by every service: topics, Redis key prefixes, defaults.

The topic table is the single source for topic creation, the README and the compose file's
topic-creation service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PARTITIONS",
    "DEFAULT_TRIGGER_RULES",
    "EVENT_TYPES",
    "MAX_AMOUNT_CENTS",
    "MAX_TIME_MS",
    "MODEL_STAGES",
    "TOPICS",
    "TOPIC_ATTRIBUTION",
    "TOPIC_CAMPAIGN_READOUTS",
    "TOPIC_CAMPAIGN_REQUESTS",
    "TOPIC_DLQ",
    "TOPIC_REFERRALS",
    "TOPIC_STAGE_TRANSITIONS",
    "TOPIC_TRIGGERS_COUPONS",
    "TOPIC_TRIGGERS_OUTREACH",
    "TOPIC_TRIGGERS_REMINDERS",
    "TOPIC_TRIGGERS_SUPPRESSED",
    "MAX_ID_CHARS",
    "checked_cents",
    "checked_customer",
    "checked_id",
    "checked_tenant",
    "checked_time",
    "has_control",
    "TopicSpec",
    "event_topic",
    "REDIS_PREFIX",
]

DEFAULT_PARTITIONS = 12

# Every model the stager places customers in, with its stages lowest first: the names that
# crm.stage.transitions carries (a stage of no model there is refused by its readers).
MODEL_STAGES: dict[str, tuple[str, ...]] = {
    "pyramid": ("aware", "considering", "first_purchase", "repeat", "loyal", "advocate"),
    "aipl": ("A", "I", "P", "L"),
    "lifecycle": ("prospect", "new", "developing", "mature", "declining", "churned"),
    "path": ("browsing", "selecting", "ordered_unpaid", "paid"),
    "value_grid": tuple(f"{v}_value_{i}_interaction" for v in ("low", "high") for i in ("low", "high")),
    "sicas": ("sense", "interest", "connect", "action", "share"),
}

# The names of the trigger rules the engine ships with: decisions carry them (`rule`), and a
# service that configures something per rule checks its names against them.
DEFAULT_TRIGGER_RULES: tuple[str, ...] = (
    "considering_coupon", "first_purchase_gift", "repurchase_reminder", "vip_rights", "referral_incentive",
    "unpaid_order_reminder", "abandoned_cart_reminder", "winback_declining", "winback_churned", "welcome",
    "birthday_gift",
)  # fmt: skip

# The five event types of the domain; each has its schema `schemas/<type>.avsc` and its topic.
EVENT_TYPES: tuple[str, ...] = ("browse", "cart", "order", "follow", "profile")

TOPIC_DLQ = "crm.events.dlq"
TOPIC_STAGE_TRANSITIONS = "crm.stage.transitions"
TOPIC_REFERRALS = "crm.stage.referrals"
TOPIC_TRIGGERS_COUPONS = "crm.triggers.coupons"
TOPIC_TRIGGERS_REMINDERS = "crm.triggers.reminders"
TOPIC_TRIGGERS_OUTREACH = "crm.triggers.outreach"
TOPIC_TRIGGERS_SUPPRESSED = "crm.triggers.suppressed"
TOPIC_ATTRIBUTION = "crm.attribution"
TOPIC_CAMPAIGN_READOUTS = "crm.attribution.readouts"
TOPIC_CAMPAIGN_REQUESTS = "crm.campaigns.requests"

REDIS_PREFIX = "crm:"

# What the engines' states can hold: event times from 1970 to year ~5000 (epoch ms), amounts
# below 10^11 currency units; an input outside is dead-lettered by every service alike.
MAX_TIME_MS = 10**14
MAX_AMOUNT_CENTS = 10**13


def checked_time(ms: int) -> int:
    """`ms` if the states can hold it; ValueError (a dead letter) otherwise."""
    if not 0 <= ms < MAX_TIME_MS:
        raise ValueError(f"out of range: event time {ms}")
    return ms


# the longest tenant or customer id an engine takes (beyond what ingest accepts by default, 256)
MAX_ID_CHARS = 1024


def checked_cents(amount: float) -> int:
    """An amount in currency units as whole cents; ValueError for a negative, huge or NaN one."""
    if not 0 <= amount * 100 < MAX_AMOUNT_CENTS:  # also false for NaN
        raise ValueError(f"out of range: amount {amount}")
    return round(amount * 100)


def checked_tenant(tenant: str) -> str:
    """`tenant` if it can lead a Redis key and its hash tag `{tenant:shard}`: not empty, no ':',
    '{' or '}' (a tag cut short or empty would scatter a unit's keys over slots), at most
    MAX_ID_CHARS characters."""
    if not tenant:
        raise ValueError("out of range: tenant is empty")
    if ":" in tenant or "{" in tenant or "}" in tenant:
        raise ValueError("out of range: a tenant must not contain ':', '{' or '}'")
    if len(tenant) > MAX_ID_CHARS:
        raise ValueError(f"out of range: tenant longer than {MAX_ID_CHARS} characters")
    return checked_id(tenant, "tenant")


def checked_customer(customer: str) -> str:
    """`customer` if it names a customer: not empty, at most MAX_ID_CHARS characters, no control
    character (every engine takes the same ids)."""
    if not customer:
        raise ValueError("out of range: customer_id is empty")
    if len(customer) > MAX_ID_CHARS:
        raise ValueError(f"out of range: customer_id longer than {MAX_ID_CHARS} characters")
    return checked_id(customer)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def checked_id(value: str, what: str = "customer_id") -> str:
    """`value` if it holds no control character (the engines' keys and logs separate their parts
    with them); ValueError otherwise."""
    if _CONTROL.search(value):
        raise ValueError(f"out of range: {what} contains a control character")
    return value


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def event_topic(event_type: str) -> str:
    """Topic that carries events of `event_type` (one of EVENT_TYPES)."""
    return f"crm.events.{event_type}"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    schema: str  # full Avro name of the record the messages of the topic carry
    description: str
    partitions: int = DEFAULT_PARTITIONS
    also: tuple[str, ...] = ()  # other records the topic carries (markers between the main ones)

    @property
    def schemas(self) -> tuple[str, ...]:
        return (self.schema, *self.also)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(event_topic("browse"), "crm.events.Browse", "page, product, search or store views"),
    TopicSpec(event_topic("cart"), "crm.events.Cart", "cart adds and removes"),
    TopicSpec(event_topic("order"), "crm.events.Order", "orders created, paid, cancelled, refunded"),
    TopicSpec(event_topic("follow"), "crm.events.Follow", "follows, unfollows and favourites"),
    TopicSpec(event_topic("profile"), "crm.events.Profile", "attributes and consent"),
    TopicSpec(TOPIC_DLQ, "crm.events.DeadLetter", "rejected input with its reason"),
    TopicSpec(
        TOPIC_STAGE_TRANSITIONS,
        "crm.stage.StageTransition",
        "every stage change of every model (and the stager's progress per partition)",
        also=("crm.stage.Progress",),
    ),
    TopicSpec(TOPIC_REFERRALS, "crm.stage.ReferralCredit", "referral credits, keyed by the referrer (stager input)"),
    TopicSpec(TOPIC_TRIGGERS_COUPONS, "crm.triggers.Trigger", "coupon actions"),
    TopicSpec(TOPIC_TRIGGERS_REMINDERS, "crm.triggers.Trigger", "unpaid-order, cart and repurchase reminders"),
    TopicSpec(TOPIC_TRIGGERS_OUTREACH, "crm.triggers.Trigger", "welcome, VIP, win-back, referral, birthday"),
    TopicSpec(
        TOPIC_TRIGGERS_SUPPRESSED,
        "crm.triggers.Trigger",
        "decisions suppressed by a guardrail (and the triggers' progress per partition)",
        also=("crm.stage.Progress",),
    ),
    TopicSpec(
        TOPIC_CAMPAIGN_REQUESTS,
        "crm.campaigns.Request",
        "audience members of scheduled campaign runs, keyed by customer (and the analytics' progress per partition)",
        also=("crm.stage.Progress",),
    ),
    TopicSpec(TOPIC_ATTRIBUTION, "crm.attribution.Attribution", "orders attributed to outreach"),
    TopicSpec(
        TOPIC_CAMPAIGN_READOUTS,
        "crm.attribution.CampaignReadout",
        "each campaign against its control group, as attribution reads it now (the latest holds)",
    ),
)
