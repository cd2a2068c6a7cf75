"""Redis key layout, in one place. Per-customer keys carry a `{tenant:customer}` hash tag so a
customer's keys stay together on a Redis Cluster."""

from __future__ import annotations

from services.common.constants import REDIS_PREFIX

__all__ = [
    "applied_offsets_key",
    "attribution_clock_key",
    "attribution_outbox_key",
    "attribution_state_key",
    "attribution_timers_key",
    "campaign_key",
    "campaigns_key",
    "clock_key",
    "counts_key",
    "customer_key",
    "history_key",
    "behaviour_key",
    "customer_ids_key",
    "customer_names_key",
    "analytics_timers_key",
    "attribute_state_key",
    "attribute_key",
    "attribute_values_key",
    "audiences_key",
    "campaign_specs_key",
    "campaign_runs_key",
    "campaign_failures_key",
    "campaign_results_key",
    "analytics_outbox_key",
    "analytics_clock_key",
    "log_key",
    "outbox_key",
    "shard_clock_key",
    "tenants_key",
    "timers_key",
    "trigger_clock_key",
    "trigger_outbox_key",
    "trigger_state_key",
    "trigger_timers_key",
]


def customer_key(tenant: str, customer: str) -> str:
    """Hash holding one customer's packed stage state (field `s`)."""
    return f"{REDIS_PREFIX}c:{{{tenant}:{customer}}}"


def timers_key(tenant: str, shard: int) -> str:
    """Sorted set of customers by the event time of their next time-driven change."""
    return f"{REDIS_PREFIX}timers:{tenant}:{shard}"


def counts_key(tenant: str, model: str) -> str:
    """Hash of stage -> number of customers in it now."""
    return f"{REDIS_PREFIX}counts:{tenant}:{model}"


def log_key(tenant: str, model: str) -> str:
    """Sorted set of every transition of a model, scored by its event time."""
    return f"{REDIS_PREFIX}log:{tenant}:{model}"


def clock_key() -> str:
    """Hash tenant -> "<latest event time>:<watermark>" of the stager's event-time clock."""
    return f"{REDIS_PREFIX}clock"


def shard_clock_key() -> str:
    """Hash "<tenant>|<shard>" -> "<latest event time>:<watermark>" of each partition's clock."""
    return f"{REDIS_PREFIX}clock:shards"


def tenants_key() -> str:
    return f"{REDIS_PREFIX}tenants"


def applied_offsets_key(group: str) -> str:
    """Hash "topic:partition" -> next offset whose effects are not yet in Redis."""
    return f"{REDIS_PREFIX}applied:{group}"


def outbox_key(group: str, shard: int) -> str:
    """Hash id -> record a batch of `group` decided to produce, not yet confirmed on Kafka."""
    return f"{REDIS_PREFIX}outbox:{group}:{shard}"


def trigger_state_key(tenant: str, customer: str) -> str:
    """Hash holding one customer's trigger state (field `s`): consent, timers, caps, decisions."""
    return f"{REDIS_PREFIX}t:{{{tenant}:{customer}}}"


def trigger_timers_key(tenant: str, shard: int) -> str:
    """Sorted set of customers by the due time of their next trigger timer."""
    return f"{REDIS_PREFIX}trg:timers:{tenant}:{shard}"


def trigger_outbox_key(shard: int) -> str:
    """Hash trigger id -> decided record not yet confirmed on Kafka."""
    return f"{REDIS_PREFIX}trg:outbox:{shard}"


def trigger_clock_key() -> str:
    """Hash "<tenant>|<shard>" -> "<latest event time>:<watermark>" of the trigger engine's clock."""
    return f"{REDIS_PREFIX}trg:clock"


def attribution_state_key(tenant: str, customer: str) -> str:
    """Hash holding one customer's attribution state (field `s`): touches, orders, activity."""
    return f"{REDIS_PREFIX}a:{{{tenant}:{customer}}}"


def attribution_timers_key(tenant: str, shard: int) -> str:
    """Sorted set of customers by when attribution needs them again (a window ends, ...)."""
    return f"{REDIS_PREFIX}attr:timers:{tenant}:{shard}"


def attribution_outbox_key(shard: int) -> str:
    """Hash record id -> attribution record not yet confirmed on Kafka."""
    return f"{REDIS_PREFIX}attr:outbox:{shard}"


def attribution_clock_key() -> str:
    """Hash "<tenant>|<shard>" -> "<latest event time>:<watermark>" of attribution's clock."""
    return f"{REDIS_PREFIX}attr:clock"


def campaigns_key(tenant: str) -> str:
    """Hash campaign id -> "<rule>|<window days>" of every campaign with a trial."""
    return f"{REDIS_PREFIX}attr:campaigns:{tenant}"


def campaign_key(tenant: str, campaign: str) -> str:
    """Hash of a campaign's counters, "<final|open>|<group>|<measure>" -> sum over its trials."""
    return f"{REDIS_PREFIX}attr:campaign:{tenant}:{campaign}"


def history_key(tenant: str, model: str, shard: int, part: str) -> str:
    """One part of a model's stage history for one shard (`services.analytics.store`); the hash
    tag keeps a shard's histories and customer ids together on a Redis Cluster."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:{model}:{part}"


def behaviour_key(tenant: str, shard: int, part: str) -> str:
    """One part of a shard's behaviour index (`services.analytics.behaviour`), under the shard's
    hash tag with its histories and customer ids."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:b:{part}"


def customer_ids_key(tenant: str, shard: int) -> str:
    """Hash customer -> dense integer id (from 0) of one shard's customers (the bitmaps' members)."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:ids"


def customer_names_key(tenant: str, shard: int) -> str:
    """Hash dense id -> customer: the other way round."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:names"


def attribute_state_key(tenant: str, shard: int) -> str:
    """Hash "<id>|<attribute>" -> "<event time>|<event id>|<value>": the value each customer of
    the shard holds now, and the update it came from."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:attrs"


def attribute_key(tenant: str, shard: int, name: str, value: str) -> str:
    """Redis bitmap of the shard's customers (bit = dense id) whose attribute `name` is `value`."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:a:{name}:{value}"


def attribute_values_key(tenant: str, shard: int, name: str) -> str:
    """Set of the values attribute `name` has taken on the shard."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:av:{name}"


def campaign_results_key(tenant: str) -> str:
    """Hash campaign id -> JSON of its latest readout from crm.attribution.readouts (analytics)."""
    return f"{REDIS_PREFIX}an:campaigns:{tenant}"


def campaign_specs_key(tenant: str) -> str:
    """Hash campaign id -> JSON of a scheduled campaign (`services.analytics.campaigns`)."""
    return f"{REDIS_PREFIX}an:campaign-specs:{tenant}"


def campaign_failures_key(tenant: str) -> str:
    """Hash "<campaign>|<run ms>|<shard>" -> why that run could not be evaluated there."""
    return f"{REDIS_PREFIX}an:campaign-failures:{tenant}"


def campaign_runs_key(tenant: str, shard: int) -> str:
    """Hash campaign id -> the time of its last run fired on the shard."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:runs"


def audiences_key(tenant: str) -> str:
    """Hash audience name -> JSON of its saved expression."""
    return f"{REDIS_PREFIX}aud:{tenant}"


def analytics_timers_key(tenant: str, shard: int) -> str:
    """Sorted set of the analytics worker's timers (it sets none; the loop looks)."""
    return f"{REDIS_PREFIX}an:timers:{tenant}:{shard}"


def analytics_outbox_key(shard: int) -> str:
    """Hash of the analytics worker's dead letters not yet confirmed on Kafka."""
    return f"{REDIS_PREFIX}an:outbox:{shard}"


def analytics_clock_key() -> str:
    """Hash "tenant|shard" -> the analytics worker's shard clock."""
    return f"{REDIS_PREFIX}an:clock"
