"""How attribution measures: the window per trigger rule, last or first touch, what a message
costs per channel, and how long a refund can still take an order back.

The defaults ship with the engine; a YAML/JSON file (`CRM_ATTRIBUTION_FILE`) may change any of
them. A bad value stops start-up with a message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.constants import DEFAULT_TRIGGER_RULES
from services.common.errors import ConfigError
from services.common.settings import config_problem, read_config_file

__all__ = ["AttributionConfig", "RuleWindow", "load_attribution_config"]

DAY_MS = 86_400_000
Channel = Literal["sms", "email", "push", "in_app"]
_CHANNEL_COSTS: dict[Channel, float] = {"sms": 0.05, "email": 0.01, "push": 0.0, "in_app": 0.0}
# what one message may cost: a finite amount, at most this (a typo of a few orders of magnitude
# would make every campaign's return meaningless)
MAX_MESSAGE_COST = 100.0


def _whole_cents(value: float) -> float:
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError(f"{value} is not a whole number of cents (figures are kept in cents)")
    return value


Cost = Annotated[float, Field(ge=0, le=MAX_MESSAGE_COST, allow_inf_nan=False), AfterValidator(_whole_cents)]


class _Strict(BaseModel):
    # strict: a window of `true` or "7" is refused, not read as 1 or 7
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class RuleWindow(_Strict):
    attribution_window_days: int = Field(ge=1, le=366)
    # a rule of the tenant's own trigger table, not one the engine ships with: a name that is
    # neither is refused, so a misspelt rule cannot quietly keep the default window
    custom: bool = False


class AttributionConfig(_Strict):
    # (touch time, touch time + W]: the orders a trial can convert with
    attribution_window_days: int = Field(7, ge=1, le=366)
    # which treatment touch an order's attribution record credits when several windows hold it
    model: Literal["last_touch", "first_touch"] = "last_touch"
    # what one message costs on each channel (currency units), counted for every treatment trial;
    # a channel the file leaves out keeps its default
    channel_costs: dict[Channel, Cost] = Field(default_factory=lambda: dict(_CHANNEL_COSTS))
    # per trigger rule (its name): another window
    rules: dict[str, RuleWindow] = Field(default_factory=dict)
    # a refund up to this long after a window's end still takes the order back out of its figures
    keep_days: float = Field(90.0, ge=1, le=3660)

    @field_validator("channel_costs", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**_CHANNEL_COSTS, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _known_rules(self) -> AttributionConfig:
        for name, window in self.rules.items():
            if name not in DEFAULT_TRIGGER_RULES and not window.custom:
                raise ValueError(
                    f"rules.{name}: not a default trigger rule ({', '.join(DEFAULT_TRIGGER_RULES)}); "
                    "for a rule of your own trigger table, add `custom: true`"
                )
        return self

    def window_ms(self, rule: str) -> int:
        found = self.rules.get(rule)
        days = found.attribution_window_days if found else self.attribution_window_days
        return int(days * DAY_MS)

    def channel_cents(self, channel: str) -> int:
        costs: dict[str, float] = {str(k): v for k, v in self.channel_costs.items()}
        return round(costs.get(channel, 0.0) * 100)

    @property
    def keep_ms(self) -> int:
        return int(self.keep_days * DAY_MS)


def load_attribution_config(path: Path | None = None) -> AttributionConfig:
    """The defaults, with the keys of `path` (YAML or JSON) replacing them."""
    if path is None:
        return AttributionConfig()
    loaded = read_config_file(path, "attribution file")
    try:
        return AttributionConfig(**loaded)
    except ValidationError as exc:
        problems = [config_problem(".".join(str(p) for p in err["loc"]), err) for err in exc.errors()]
        raise ConfigError(f"invalid attribution settings in {path}: " + "; ".join(problems)) from exc
