"""Start and stop real worker processes (stager, triggers, attribution, ingest) against a test stack."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self, cast

from tests.conftest import StackInfo
from tests.integration.lookup import cluster_env

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, module: str, stack: StackInfo, port: int, log_path: Path, env: Mapping[str, str]) -> None:
        self.module = module
        self.env = {
            **os.environ,
            "CRM_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "CRM_REDIS_URL": stack.redis_url,
            "CRM_STATE_DIR": str(log_path.parent),
            "CRM_IDLE_FLUSH_SECONDS": "1",
            "CRM_LOG_LEVEL": "warn",
            **cluster_env(stack),
            **env,
        }
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Self:
        if health(self.port) is not None:  # else its answer would pass for this worker's
            raise RuntimeError(f"port {self.port} already answers: a worker of an earlier run is still up")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.module} did not answer /healthz")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
            return cast(str, reply.read().decode())

    def kill(self) -> None:
        """As a crash would: no shutdown, no final commit."""
        cast("subprocess.Popen[bytes]", self.proc).kill()
        cast("subprocess.Popen[bytes]", self.proc).wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class StagerProcess(WorkerProcess):
    def __init__(
        self, stack: StackInfo, group: str, port: int, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        env = {"CRM_STAGER_GROUP": group, "CRM_STAGER_WEB_PORT": str(port), **(env or {})}
        super().__init__("services.stager", stack, port, log_path, env)


class TriggersProcess(WorkerProcess):
    def __init__(
        self, stack: StackInfo, group: str, port: int, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        env = {"CRM_TRIGGERS_GROUP": group, "CRM_TRIGGERS_WEB_PORT": str(port), **(env or {})}
        super().__init__("services.triggers", stack, port, log_path, env)


class AttributionProcess(WorkerProcess):
    def __init__(
        self, stack: StackInfo, group: str, port: int, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        env = {"CRM_ATTRIBUTION_GROUP": group, "CRM_ATTRIBUTION_WEB_PORT": str(port), **(env or {})}
        super().__init__("services.attribution", stack, port, log_path, env)


class AnalyticsProcess(WorkerProcess):
    def __init__(
        self, stack: StackInfo, group: str, port: int, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        env = {"CRM_ANALYTICS_GROUP": group, "CRM_ANALYTICS_WEB_PORT": str(port), **(env or {})}
        super().__init__("services.analytics", stack, port, log_path, env)


class IngestProcess(WorkerProcess):
    def __init__(
        self, stack: StackInfo, port: int, log_path: Path, key: str = "test-key", env: Mapping[str, str] | None = None
    ) -> None:
        env = {"CRM_INGEST_PORT": str(port), "CRM_API_KEYS": key, **(env or {})}
        super().__init__("services.ingest", stack, port, log_path, env)


def health(port: int) -> int | None:
    """The status /healthz answers on `port` (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return cast(int, reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def await_health(ports: Iterable[int], status: int | None, within: float) -> dict[int, int | None]:
    """Wait until every port's /healthz answers `status`; the answers seen last otherwise."""
    deadline = time.monotonic() + within
    while True:
        seen = {port: health(port) for port in ports}
        if all(code == status for code in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def post_json(port: int, path: str, body: Any, key: str) -> tuple[int, Any]:
    """(status, decoded JSON answer) of a POST of `body` to a service on `port`, with an API key."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return cast(int, reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
