"""`crm` commands wait out a Redis or Kafka outage, then give up in one line (no traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CRM = [sys.executable, "-c", "from crm.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(redis_port: int, kafka_port: int, wait: float) -> dict[str, str]:
    return {
        **os.environ,
        "CRM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CRM_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        "CRM_OUTAGE_WAIT_SECONDS": str(wait),
    }


def test_a_query_gives_up_in_one_line_when_redis_stays_away() -> None:
    env = _env(_free_port(), _free_port(), wait=3.5)
    started = time.monotonic()
    done = subprocess.run([*CRM, "stages", "counts", "--model", "aipl", "--tenant", "t"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "crm: redis unreachable for 3.5 s, giving up" in done.stderr
    assert done.stderr.count("redis unavailable") == 1  # the wait is logged once
    assert 3.5 <= time.monotonic() - started < 30


def test_a_kafka_command_gives_up_in_one_line_when_the_broker_stays_away() -> None:
    env = _env(_free_port(), _free_port(), wait=3.0)
    started = time.monotonic()
    done = subprocess.run([*CRM, "tail", "crm.events.order", "--max", "1"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert time.monotonic() - started >= 3.0, "it gave up before the time it names"
    assert "Traceback" not in done.stderr
    assert "Unclosed" not in done.stderr, "a failed try leaves its Kafka client open"
    assert "crm: kafka unreachable for 3 s, giving up" in done.stderr


def test_a_query_answers_once_redis_comes_back(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(port, _free_port(), wait=60)
    query = subprocess.Popen([*CRM, "stages", "counts", "--model", "aipl", "--tenant", "t", "--json"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(2.0)
    assert query.poll() is None, "the command should still be waiting for Redis"
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        out, err = query.communicate(timeout=60)
    finally:
        redis.terminate()
        redis.wait(10)
    assert query.returncode == 0, err
    assert out.strip() == "{}"
    assert "redis unavailable" in err and "Traceback" not in err
