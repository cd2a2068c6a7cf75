from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.stager.config import DAY_MS, StageRules, load_rules


def test_defaults_are_the_domain_rules() -> None:
    rules = load_rules()
    assert rules == StageRules()
    assert rules.aipl_window_ms == 90 * DAY_MS and rules.lifecycle_churn_ms == 180 * DAY_MS
    assert rules.loyal_min_paid == 3 and rules.value_high_amount == 500
    assert rules.sicas_window_ms == 90 * DAY_MS


def test_a_file_and_the_environment_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("loyal_min_paid: 5\naipl_window_ms: 1000\n")
    rules = load_rules(path, {"CRM_RULES_LOYAL_MIN_PAID": "4", "OTHER": "x"})
    assert rules.loyal_min_paid == 4 and rules.aipl_window_ms == 1000


def test_a_bad_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("session_gap_ms: -5\n")
    with pytest.raises(ConfigError, match="session_gap_ms.*CRM_RULES_SESSION_GAP_MS"):
        load_rules(path)


def test_the_sicas_window_is_configurable_like_the_aipl_window(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("sicas_window_ms: 1000\n")
    assert load_rules(path).sicas_window_ms == 1000
    assert load_rules(path, {"CRM_RULES_SICAS_WINDOW_MS": "2000"}).sicas_window_ms == 2000


@pytest.mark.parametrize("value", ["0", "-1", "ninety"])
def test_a_bad_sicas_window_stops_the_stager_at_start_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from services.stager.__main__ import main

    monkeypatch.setenv("CRM_RULES_SICAS_WINDOW_MS", value)
    with pytest.raises(SystemExit, match="stager: .*sicas_window_ms.*CRM_RULES_SICAS_WINDOW_MS"):
        main()


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("loyal_min_payed: 3\n")
    with pytest.raises(ConfigError, match="loyal_min_payed"):
        load_rules(path)


def test_inconsistent_thresholds_are_refused() -> None:
    with pytest.raises(ConfigError, match="lifecycle_developing_min_paid"):
        load_rules(None, {"CRM_RULES_LIFECYCLE_DEVELOPING_MIN_PAID": "5"})


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_rules(path)
