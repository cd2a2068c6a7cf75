"""The numbers behind the default stage rules (the domain's "default rules, precisely").

One validated model, read from an optional YAML/JSON file (`CRM_STAGE_RULES_FILE`) and then from
environment variables `CRM_RULES_<FIELD>`; a bad value stops start-up naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.errors import ConfigError
from services.common.settings import read_config_file

__all__ = ["DAY_MS", "MINUTE_MS", "StageRules", "load_rules"]

MINUTE_MS = 60_000
DAY_MS = 86_400_000


class StageRules(BaseModel):
    """Every threshold of the default rules; times in milliseconds of event time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loyal_min_paid: int = Field(3, ge=1)
    advocate_min_referrals: int = Field(1, ge=1)
    aipl_window_ms: int = Field(90 * DAY_MS, gt=0)
    aipl_loyal_min_paid: int = Field(2, ge=1)
    sicas_window_ms: int = Field(90 * DAY_MS, gt=0)
    lifecycle_churn_ms: int = Field(180 * DAY_MS, gt=0)
    lifecycle_decline_ms: int = Field(90 * DAY_MS, gt=0)
    lifecycle_mature_min_paid: int = Field(4, ge=1)
    lifecycle_developing_min_paid: int = Field(2, ge=1)
    session_gap_ms: int = Field(30 * MINUTE_MS, gt=0)
    value_window_ms: int = Field(365 * DAY_MS, gt=0)
    value_high_amount: float = Field(500.0, ge=0)
    interaction_window_ms: int = Field(30 * DAY_MS, gt=0)
    interaction_high_events: int = Field(5, ge=1, le=8)

    @model_validator(mode="after")
    def _consistent(self) -> StageRules:
        if self.lifecycle_developing_min_paid >= self.lifecycle_mature_min_paid:
            raise ValueError("lifecycle_developing_min_paid must be below lifecycle_mature_min_paid")
        return self

    @property
    def order_memory_ms(self) -> int:
        """How long a paid order stays in the per-customer list (the longest window that needs it)."""
        return max(self.aipl_window_ms, self.sicas_window_ms, self.value_window_ms)


def load_rules(path: Path | None = None, env: dict[str, str] | None = None) -> StageRules:
    """Rules from `path` (YAML or JSON) overlaid with `CRM_RULES_*` variables from `env`."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        data.update(read_config_file(path, "stage rules file", "a mapping of rule names to numbers"))
    for key, value in (env or {}).items():
        if key.startswith("CRM_RULES_"):
            data[key[len("CRM_RULES_") :].lower()] = value
    try:
        return StageRules(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "rules"
            problems.append(f"{name} (file key {name!r} or CRM_RULES_{name.upper()}): {err['msg']}")
        raise ConfigError(f"invalid stage rules from {where}: " + "; ".join(problems)) from exc
