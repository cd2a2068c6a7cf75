"""Redis key layout, in one place. Engines work per unit, a tenant's shard (partition): every key a
unit's batch touches carries the unit's hash tag `{tenant:shard}`, so each batch runs in one slot
of a Redis Cluster and units spread over its masters. Tenant-wide answers (stage counts, campaign
counters) sum the tenant's units, found in the `units` set."""

from __future__ import annotations

from services.common.constants import REDIS_PREFIX

# Keys only the earlier, single-node layout wrote (its clock hashes; one exists once a worker ran):
# a worker refuses to start on them, `crm migrate-keys` rewrites that data.
OLD_LAYOUT_KEYS = tuple(f"{REDIS_PREFIX}{k}" for k in ("clock:shards", "trg:clock", "attr:clock", "an:clock"))

__all__ = [
    "OLD_LAYOUT_KEYS",
    "analytics_timers_key",
    "applied_offsets_key",
    "attribute_key",
    "attribute_state_key",
    "attribute_values_key",
    "attribution_state_key",
    "attribution_timers_key",
    "audiences_key",
    "behaviour_key",
    "campaign_failures_key",
    "campaign_key",
    "campaign_results_key",
    "campaign_runs_key",
    "campaign_specs_key",
    "campaigns_key",
    "clock_key",
    "counts_key",
    "customer_ids_key",
    "customer_key",
    "customer_names_key",
    "history_key",
    "log_key",
    "outbox_key",
    "tenants_key",
    "timers_key",
    "trigger_state_key",
    "trigger_timers_key",
    "unit_tag",
    "units_key",
]


def unit_tag(tenant: str, shard: int) -> str:
    """The hash tag of a unit (a tenant's shard): every key one batch of a unit touches carries
    it, so the batch's script and MULTI run in one slot of a Redis Cluster. Tenant "" is a shard's
    own unit: records without a tenant, and the shard's floor fence."""
    return f"{{{tenant}:{shard}}}"


def customer_key(tenant: str, shard: int, customer: str) -> str:
    """Hash holding one customer's packed stage state (field `s`)."""
    return f"{REDIS_PREFIX}c:{unit_tag(tenant, shard)}:{customer}"


def timers_key(tenant: str, shard: int) -> str:
    """Sorted set of customers by the event time of their next time-driven change."""
    return f"{REDIS_PREFIX}timers:{unit_tag(tenant, shard)}"


def counts_key(tenant: str, shard: int, model: str) -> str:
    """Hash of stage -> number of the shard's customers in it now (a tenant's count sums its shards)."""
    return f"{REDIS_PREFIX}counts:{unit_tag(tenant, shard)}:{model}"


def log_key(tenant: str, shard: int, model: str) -> str:
    """Sorted set of every transition of a model on a shard, scored by its event time."""
    return f"{REDIS_PREFIX}log:{unit_tag(tenant, shard)}:{model}"


def units_key() -> str:
    """Set of every unit "<tenant>|<shard>" any engine has written (its keys are found from it)."""
    return f"{REDIS_PREFIX}units"


def clock_key(service: str, tenant: str, shard: int) -> str:
    """String "<latest event time>:<watermark>[:<ceiling>]" of a service's clock of one unit."""
    return f"{REDIS_PREFIX}clock:{unit_tag(tenant, shard)}:{service}"


def tenants_key() -> str:
    return f"{REDIS_PREFIX}tenants"


def applied_offsets_key(group: str, tenant: str, shard: int) -> str:
    """Hash "topic:partition" -> next offset whose effects on the unit are not yet in Redis; the
    shard's own unit (tenant "") holds its floor: every record below it is applied in every unit."""
    return f"{REDIS_PREFIX}applied:{unit_tag(tenant, shard)}:{group}"


def outbox_key(group: str, tenant: str, shard: int) -> str:
    """Hash id -> record a batch of `group` decided to produce, not yet confirmed on Kafka."""
    return f"{REDIS_PREFIX}outbox:{unit_tag(tenant, shard)}:{group}"


def trigger_state_key(tenant: str, shard: int, customer: str) -> str:
    """Hash holding one customer's trigger state (field `s`): consent, timers, caps, decisions."""
    return f"{REDIS_PREFIX}t:{unit_tag(tenant, shard)}:{customer}"


def trigger_timers_key(tenant: str, shard: int) -> str:
    """Sorted set of customers by the due time of their next trigger timer."""
    return f"{REDIS_PREFIX}trg:timers:{unit_tag(tenant, shard)}"


def attribution_state_key(tenant: str, shard: int, customer: str) -> str:
    """Hash holding one customer's attribution state (field `s`): touches, orders, activity."""
    return f"{REDIS_PREFIX}a:{unit_tag(tenant, shard)}:{customer}"


def attribution_timers_key(tenant: str, shard: int) -> str:
    """Sorted set of customers by when attribution needs them again (a window ends, ...)."""
    return f"{REDIS_PREFIX}attr:timers:{unit_tag(tenant, shard)}"


def campaigns_key(tenant: str, shard: int) -> str:
    """Hash campaign id -> "<rule>|<window days>" of every campaign with a trial on the shard."""
    return f"{REDIS_PREFIX}attr:campaigns:{unit_tag(tenant, shard)}"


def campaign_key(tenant: str, shard: int, campaign: str) -> str:
    """Hash of a campaign's counters on the shard, "<final|open>|<group>|<measure>" -> sum over
    its trials (a campaign's counters sum its shards)."""
    return f"{REDIS_PREFIX}attr:campaign:{unit_tag(tenant, shard)}:{campaign}"


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


def campaign_results_key(tenant: str, shard: int) -> str:
    """Hash campaign id -> JSON of its latest readout from crm.attribution.readouts (analytics;
    a campaign's readouts are keyed by it, so they all come on one shard)."""
    return f"{REDIS_PREFIX}hist:{unit_tag(tenant, shard)}:results"


def campaign_specs_key(tenant: str) -> str:
    """Hash campaign id -> JSON of a scheduled campaign (`services.analytics.campaigns`)."""
    return f"{REDIS_PREFIX}an:campaign-specs:{tenant}"


def campaign_failures_key(tenant: str, shard: int) -> str:
    """Hash "<campaign>|<run ms>|<shard>" -> why that run could not be evaluated on the shard."""
    return f"{REDIS_PREFIX}hist:{unit_tag(tenant, shard)}:failures"


def campaign_runs_key(tenant: str, shard: int) -> str:
    """Hash campaign id -> the time of its last run fired on the shard."""
    return f"{REDIS_PREFIX}hist:{{{tenant}:{shard}}}:runs"


def audiences_key(tenant: str) -> str:
    """Hash audience name -> JSON of its saved expression."""
    return f"{REDIS_PREFIX}aud:{tenant}"


def analytics_timers_key(tenant: str, shard: int) -> str:
    """Sorted set of the analytics worker's timers (it sets none; the loop looks)."""
    return f"{REDIS_PREFIX}an:timers:{unit_tag(tenant, shard)}"
