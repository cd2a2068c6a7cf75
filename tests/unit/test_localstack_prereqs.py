"""The local stack explains what is missing instead of failing obscurely."""

from pathlib import Path

import pytest

from crm.localstack import LocalStack
from services.common.errors import StackError
from services.common.settings import CommonSettings

SETTINGS = CommonSettings(kafka_bootstrap="127.0.0.1:49092", redis_url="redis://127.0.0.1:46379/0")


def test_missing_maven_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    stack = LocalStack(SETTINGS.model_copy(update={"state_dir": tmp_path}), jar_dir=tmp_path / "jars")
    with pytest.raises(StackError, match=r"Maven \(mvn\) is not installed"):
        stack.ensure_jars()


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    stack = LocalStack(SETTINGS.model_copy(update={"state_dir": tmp_path}))
    with pytest.raises(StackError, match="Java is not installed"):
        stack._start_kafka()


def test_missing_redis_server_points_at_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    stack = LocalStack(SETTINGS.model_copy(update={"state_dir": tmp_path}))
    with pytest.raises(StackError, match="make setup"):
        stack._start_redis()


def test_the_stack_refuses_non_loopback_addresses() -> None:
    with pytest.raises(StackError, match="loopback"):
        LocalStack(CommonSettings(kafka_bootstrap="10.0.0.5:9092", redis_url="redis://10.0.0.6:6379/0"))


def test_one_non_loopback_address_is_enough_to_refuse() -> None:
    with pytest.raises(StackError, match="loopback"):
        LocalStack(CommonSettings(kafka_bootstrap="127.0.0.1:9092", redis_url="redis://10.0.0.6:6379/0"))
