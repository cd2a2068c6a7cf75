"""Attribution's settings file: what it may change, and a bad value stopping start-up with a
message naming its key (services/attribution/config.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.attribution.config import DAY_MS, load_attribution_config
from services.common.errors import ConfigError


def _load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "attribution.json"
    path.write_text(json.dumps(data))
    return load_attribution_config(path)


def test_a_file_changes_a_window_per_rule_and_a_channel_cost_keeping_the_other_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, {"rules": {"welcome": {"attribution_window_days": 3}}, "channel_costs": {"sms": 0.08}})
    assert config.window_ms("welcome") == 3 * DAY_MS
    assert config.window_ms("vip_rights") == 7 * DAY_MS
    assert config.channel_cents("sms") == 8
    assert config.channel_cents("email") == 1  # the default, though the file named only sms


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"channel_costs": {"sms": -0.05}}, "channel_costs.sms"),
        ({"channel_costs": {"sms": 1e9}}, "channel_costs.sms"),
        ({"channel_costs": {"email": "Infinity"}}, "channel_costs.email"),
        ({"channel_costs": {"fax": 0.1}}, "channel_costs.fax"),
        ({"attribution_window_days": True}, "attribution_window_days"),
        ({"attribution_window_days": "7"}, "attribution_window_days"),
        ({"attribution_window_days": 0}, "attribution_window_days"),
        ({"rules": {"welcome": {"attribution_window_days": False}}}, "rules.welcome.attribution_window_days"),
        ({"model": "linear"}, "model"),
        ({"keep_days": 0}, "keep_days"),
        ({"keep_days": 0.001}, "keep_days"),
        ({"channel_costs": {"sms": 0.004}}, "channel_costs.sms"),  # would count as nothing
        ({"channel_costs": {"sms": 0.055}}, "channel_costs.sms"),
        ({"rules": {"first_purchse_gift": {"attribution_window_days": 3}}}, "rules.first_purchse_gift"),
        ({"windw_days": 7}, "windw_days"),
    ],
)
def test_a_bad_value_stops_start_up_naming_its_key(tmp_path: Path, data: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=rf"{named.replace('.', '[.]')}\b"):
        _load(tmp_path, data)


def test_not_a_number_is_refused_as_a_cost(tmp_path: Path) -> None:
    path = tmp_path / "attribution.json"
    path.write_text('{"channel_costs": {"sms": NaN}}')  # Python's json writes and reads it
    with pytest.raises(ConfigError, match=r"channel_costs[.]sms"):
        load_attribution_config(path)


def test_a_rule_of_the_tenants_own_table_is_accepted_when_said_so(tmp_path: Path) -> None:
    config = _load(tmp_path, {"rules": {"member_day": {"attribution_window_days": 2, "custom": True}}})
    assert config.window_ms("member_day") == 2 * DAY_MS


def test_a_cost_in_whole_cents_is_kept_exactly(tmp_path: Path) -> None:
    config = _load(tmp_path, {"channel_costs": {"sms": 0.07, "push": 1.15}})
    assert (config.channel_cents("sms"), config.channel_cents("push")) == (7, 115)


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "attribution.yaml"
    path.write_text("channel_costs:\n  sms: 0.05\n  sms: 0.50\n")
    with pytest.raises(ConfigError, match=r"'sms' appears twice"):
        load_attribution_config(path)


def test_a_value_yaml_reads_as_text_is_shown_as_given(tmp_path: Path) -> None:
    path = tmp_path / "attribution.yaml"
    path.write_text("channel_costs:\n  sms: 1e9\n")  # YAML 1.1 reads this as the text '1e9'
    with pytest.raises(ConfigError, match=r"channel_costs[.]sms: .* \(got '1e9'\)"):
        load_attribution_config(path)
