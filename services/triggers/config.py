"""The trigger rule table and guardrails (the actions the domain names), as one validated config.

The defaults below ship with the engine. A YAML/JSON file (`CRM_TRIGGER_RULES_FILE`) may replace
the guardrails and add, change or disable rules by name; a bad value stops start-up naming the key.
"""

from __future__ import annotations

from datetime import time as clock_time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.errors import ConfigError
from services.common.settings import config_problem, read_config_file
from services.common.times import checked_zone

__all__ = [
    "CHANNELS",
    "FATIGUE_LIMIT",
    "DEFAULT_RULES",
    "Cap",
    "Guardrails",
    "OfferConfig",
    "TriggerConfig",
    "TriggerRule",
    "load_trigger_config",
]

CHANNELS = ("sms", "email", "push", "in_app")
Channel = Literal["sms", "email", "push", "in_app"]
# What starts a rule: a stage transition, or one of the per-entity timers.
On = Literal["transition", "order_unpaid", "cart_abandoned", "repurchase", "birthday", "campaign"]
HOUR = 3600.0
FATIGUE_LIMIT = 8  # touches of a campaign remembered per customer for the fatigue guardrail
DAY = 24 * HOUR


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OfferConfig(_Strict):
    kind: str = Field(min_length=1)
    value: float = Field(0.0, ge=0)
    cost: float = Field(0.0, ge=0)


class TriggerRule(_Strict):
    """One row of the rule table: when `on` happens (for transitions: in `model`, into `to`,
    optionally only from one of `from_stages`), decide `action` on `channel` for `campaign`."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    on: On
    model: str | None = None
    to: str | None = None
    from_stages: tuple[str | None, ...] | None = None
    action: str = Field(min_length=1)
    campaign: str = Field(min_length=1)
    channel: Channel
    topic: Literal["coupons", "reminders", "outreach"]
    offer: OfferConfig | None = None
    # transitions: wait this long before deciding; timers: the timer's length
    # (order_unpaid: after `created`; cart_abandoned: after the last add; repurchase: the shortest interval)
    delay_seconds: float = Field(0.0, ge=0)
    quiet_hours: Literal["defer", "drop", "ignore"] = "defer"
    capped: bool = True  # counts against, and is held by, the frequency caps
    # skip a customer whose last `fatigue` touches of this campaign (sent or held out) all ended
    # without a paid order in their window of `fatigue_window_days` (0: off; keep the window
    # equal to attribution's for the campaign)
    fatigue: int = Field(0, ge=0, le=FATIGUE_LIMIT)
    fatigue_window_days: int = Field(7, ge=1, le=366)
    enabled: bool = True

    @model_validator(mode="after")
    def _transition_target(self) -> TriggerRule:
        if self.on == "transition" and not (self.model and self.to):
            raise ValueError("a transition rule needs `model` and `to`")
        if self.on in ("order_unpaid", "cart_abandoned") and self.delay_seconds <= 0:
            raise ValueError(f"an {self.on} rule needs delay_seconds > 0")
        return self


class Cap(_Strict):
    window_seconds: float = Field(gt=0)
    max: int = Field(ge=0)


class Guardrails(_Strict):
    # unknown consent: True = opted in until an opt-out (the platform collected consent at sign-up)
    consent_default: bool = True
    caps: tuple[Cap, ...] = (Cap(window_seconds=DAY, max=1), Cap(window_seconds=7 * DAY, max=3))
    quiet_start: clock_time = clock_time(21, 0)
    quiet_end: clock_time = clock_time(9, 0)
    default_timezone: str = "Asia/Shanghai"
    holdout_share: float = Field(0.10, ge=0, le=1)  # per campaign
    global_holdout_share: float = Field(0.05, ge=0, le=1)  # receives nothing from any campaign

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return checked_zone(value)


def _rule(name: str, on: On, action: str, channel: Channel, topic: str, **kw: Any) -> TriggerRule:
    return TriggerRule(
        name=name, on=on, action=action, campaign=name.replace("_", "-"), channel=channel, topic=topic, **kw
    )


def _coupon(value: float) -> OfferConfig:
    return OfferConfig(kind="coupon", value=value, cost=value)


DEFAULT_RULES: tuple[TriggerRule, ...] = (
    _rule("considering_coupon", "transition", "first_purchase_coupon", "push", "coupons",
          model="pyramid", to="considering", offer=_coupon(10)),
    _rule("first_purchase_gift", "transition", "repurchase_coupon", "push", "coupons",
          model="pyramid", to="first_purchase", offer=_coupon(15)),
    _rule("repurchase_reminder", "repurchase", "repurchase_reminder", "push", "reminders", delay_seconds=DAY),
    _rule("vip_rights", "transition", "vip_rights", "email", "outreach", model="pyramid", to="loyal",
          offer=OfferConfig(kind="vip", value=0, cost=5)),
    _rule("referral_incentive", "transition", "referral_incentive", "email", "outreach", model="pyramid",
          to="advocate", offer=_coupon(30)),
    _rule("unpaid_order_reminder", "order_unpaid", "unpaid_order_reminder", "sms", "reminders",
          delay_seconds=30 * 60, quiet_hours="drop", capped=False),
    _rule("abandoned_cart_reminder", "cart_abandoned", "abandoned_cart_reminder", "push", "reminders",
          delay_seconds=DAY),
    _rule("winback_declining", "transition", "winback", "sms", "outreach", model="lifecycle", to="declining",
          offer=_coupon(20)),
    _rule("winback_churned", "transition", "winback", "email", "outreach", model="lifecycle", to="churned",
          offer=_coupon(30)),
    _rule("welcome", "transition", "welcome_gift", "in_app", "outreach", model="lifecycle", to="new",
          from_stages=(None, "prospect"), offer=_coupon(5)),
    _rule("birthday_gift", "birthday", "birthday_gift", "sms", "outreach", offer=_coupon(20)),
)  # fmt: skip


class TriggerConfig(_Strict):
    rules: tuple[TriggerRule, ...] = DEFAULT_RULES
    guardrails: Guardrails = Guardrails()

    @model_validator(mode="after")
    def _unique(self) -> TriggerConfig:
        names = [r.name for r in self.rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names appear twice: {', '.join(twice)}")
        return self

    def active(self, on: str) -> list[TriggerRule]:
        return [r for r in self.rules if r.enabled and r.on == on]

    def rule(self, name: str) -> TriggerRule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_trigger_config(path: Path | None = None) -> TriggerConfig:
    """The defaults, with `path` (YAML or JSON) applied: `guardrails` replaces fields of the
    default guardrails; each entry of `rules` replaces the default rule of the same name
    (fields not given keep the default's) or adds a new rule."""
    if path is None:
        return TriggerConfig()
    loaded = read_config_file(path, "trigger rules file", "a mapping with `rules` and/or `guardrails`")
    if set(loaded) - {"rules", "guardrails"}:
        raise ConfigError(f"trigger rules file {path}: expected a mapping with `rules` and/or `guardrails`")
    rules = {r.name: r.model_dump() for r in DEFAULT_RULES}
    given = loaded.get("rules") or []
    if not isinstance(given, list):
        raise ConfigError(f"trigger rules file {path}: `rules` must be a list")
    for i, entry in enumerate(given):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"trigger rules file {path}: rules.{i}.name: every rule needs a name")
        rules[entry["name"]] = {**rules.get(entry["name"], {}), **entry}
    merged = list(rules.values())
    data = {
        "rules": merged,
        "guardrails": {**Guardrails().model_dump(), **(loaded.get("guardrails") or {})},
    }
    try:
        return TriggerConfig(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                loc[1] = merged[loc[1]].get("name", loc[1])
            problems.append(config_problem(".".join(str(p) for p in loc), err))
        raise ConfigError(f"invalid trigger rules in {path}: " + "; ".join(problems)) from exc
