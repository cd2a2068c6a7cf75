import logging

import pytest

from services.common.errors import ConfigError
from services.common.settings import CommonSettings, load_settings
from services.ingest.settings import IngestSettings


def test_bad_value_names_the_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_API_KEYS", "k")
    monkeypatch.setenv("CRM_INGEST_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="CRM_INGEST_PORT"):
        load_settings(IngestSettings)


def test_missing_api_keys_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="CRM_API_KEYS"):
        load_settings(IngestSettings)


def test_redis_url_must_be_a_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="CRM_REDIS_URL"):
        load_settings(CommonSettings)


def test_api_keys_are_split_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_API_KEYS", "a, b,,c")
    settings = load_settings(IngestSettings)
    assert settings.keys() == [b"a", b"b", b"c"]
    assert "a, b" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = CommonSettings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        settings.kafka_bootstrap = "elsewhere:1"  # type: ignore[misc]


def test_warn_is_a_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_LOG_LEVEL", "warn")
    assert load_settings(CommonSettings).logging_level() == logging.WARNING


def test_an_error_over_several_settings_names_them_and_shows_no_other_value() -> None:
    from services.stager.settings import StagerSettings

    with pytest.raises(ConfigError) as caught:
        load_settings(StagerSettings, redis_url="redis://:s3cret@127.0.0.1:1/0", repeat_horizon_seconds=10)
    assert "CRM_REPEAT_HORIZON_SECONDS" in str(caught.value) and "s3cret" not in str(caught.value)
