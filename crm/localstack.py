"""The local stack without Docker: Apache Kafka (KRaft, from Maven Central jars) and Redis.

`up` is idempotent and returns once both answer (a real metadata request to Kafka, PING to
Redis); `down` stops only the processes whose pid files it wrote. Everything lives under the
state folder (`.run/` by default) and the jar cache (`.cache/kafka-jars/`), both ignored by git.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import StackError
from services.common.settings import REPO_ROOT, CommonSettings

__all__ = ["ClusterStack", "LocalStack", "pid_alive", "stop_pid_file"]

Say = Callable[[str], None]

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_pid_file(path: Path, timeout: float = 30.0) -> bool:
    """Stop the process (group) recorded in `path`; True if one was running. Removes the file."""
    pid = _read_pid(path)
    if pid is None or not pid_alive(pid):
        path.unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if not pid_alive(pid):
            break
    try:  # reap it if it is our own child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    path.unlink(missing_ok=True)
    return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def _redis_conf(folder: Path, host: str, port: int, extra: str = "") -> Path:
    """The configuration of a Redis server of the stack (AOF every second), written in `folder`."""
    conf = folder / "redis.conf"
    conf.write_text(
        f"bind {host}\nport {port}\nprotected-mode yes\ndir {folder}\n"
        'appendonly yes\nappendfsync everysec\nsave ""\ndaemonize no\n'
        # customer states are ~60-250 bytes: keep their one-field hashes in the compact listpack form
        "hash-max-listpack-value 1024\n"
        f"{extra}logfile {folder / 'redis.log'}\n"
    )
    return conf


@dataclass
class LocalStack:
    """Kafka + Redis on loopback, owned by this checkout."""

    settings: CommonSettings = field(default_factory=lambda: CommonSettings())
    jar_dir: Path = REPO_ROOT / ".cache" / "kafka-jars"
    pom: Path = REPO_ROOT / "deploy" / "local" / "pom.xml"
    say: Say = print

    def __post_init__(self) -> None:
        self.state = Path(self.settings.state_dir)
        self.kafka_host, self.kafka_port = _split(self.settings.kafka_bootstrap)
        self.controller_port = self.kafka_port + 1
        redis_hostport = self.settings.redis_url.split("://", 1)[1].split("/")[0]
        self.redis_host, self.redis_port = _split(redis_hostport)
        if not {self.kafka_host, self.redis_host} <= {"127.0.0.1", "localhost"}:
            raise StackError("the local stack only listens on loopback; CRM_KAFKA_BOOTSTRAP/CRM_REDIS_URL point away")

    # paths
    @property
    def pids(self) -> Path:
        return self.state / "pids"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    # public API
    def up(self, timeout: float = 120.0) -> None:
        """Start whatever is not running and wait until both answer."""
        self.pids.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        self._start_kafka()
        self.wait_ready(timeout)

    def down(self) -> list[str]:
        """Stop every process this checkout started (services first, then Kafka, then Redis)."""
        stopped = []
        if self.pids.exists():
            services = [p for p in self.pids.glob("*.pid") if p.stem not in ("kafka", "redis")]
            for path in [*services, self.pid_file("kafka"), self.pid_file("redis")]:
                if stop_pid_file(path):
                    stopped.append(path.stem)
        return stopped

    def status(self) -> dict[str, str]:
        out = {}
        if self.pids.exists():
            for path in sorted(self.pids.glob("*.pid")):
                pid = _read_pid(path)
                out[path.stem] = f"running (pid {pid})" if pid and pid_alive(pid) else "stale pid file"
        out.setdefault("kafka", "stopped")
        out.setdefault("redis", "stopped")
        if out["kafka"].startswith("running"):
            out["kafka"] += f" on {self.kafka_host}:{self.kafka_port}" + ("" if self.kafka_ready() else ", not ready")
        if out["redis"].startswith("running"):
            out["redis"] += f" on {self.redis_host}:{self.redis_port}" + ("" if self.redis_ready() else ", not ready")
        return out

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        retried = False
        for name, probe in (("redis", self.redis_ready), ("kafka", self.kafka_ready)):
            while not probe():
                pid = _read_pid(self.pid_file(name))
                if pid is not None and not pid_alive(pid):
                    log = self.state / name / (name + ".log")
                    if name == "kafka" and not retried:  # a broker that fails its start-up now and then
                        retried = True
                        self.say(f"kafka exited during start-up; starting it once more (see {log})")
                        self._start_kafka()
                        continue
                    raise StackError(f"{name} exited during start-up; see {log}")
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not become ready within {timeout:.0f}s")
                time.sleep(0.5)
        self.say(
            f"kafka ready on {self.kafka_host}:{self.kafka_port}, redis ready on {self.redis_host}:{self.redis_port}"
        )

    # readiness
    def redis_ready(self) -> bool:
        try:
            with socket.create_connection((self.redis_host, self.redis_port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kafka_ready(self) -> bool:
        """A real metadata request: the broker answers and lists itself."""
        from aiokafka import AIOKafkaClient  # local import: the stack commands must start fast

        async def probe() -> bool:
            client = AIOKafkaClient(bootstrap_servers=f"{self.kafka_host}:{self.kafka_port}", request_timeout_ms=3000)
            try:
                await asyncio.wait_for(client.bootstrap(), 5)
                return bool(client.cluster.brokers())
            except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                return False
            finally:
                await client.close()

        if not _port_open(self.kafka_host, self.kafka_port):
            return False
        return asyncio.run(probe())

    # redis
    def _start_redis(self) -> None:
        if self._running("redis"):
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError("redis-server is not installed; run `make setup` (installs Debian's redis-server)")
        if _port_open(self.redis_host, self.redis_port):
            raise StackError(f"port {self.redis_port} is taken by a process this checkout did not start")
        folder = self.state / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        conf = _redis_conf(folder, self.redis_host, self.redis_port)
        self._spawn("redis", [exe, str(conf)], folder / "redis.stdout")
        self.say(f"started redis-server on {self.redis_host}:{self.redis_port} (data in {folder})")

    # kafka
    def ensure_jars(self) -> Path:
        """Fetch the broker jars from Maven Central once (`mvn dependency:copy-dependencies`)."""
        marker = self.jar_dir / ".complete"
        if marker.exists():
            return self.jar_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(
                "Maven (mvn) is not installed; it fetches the Kafka broker jars (Debian: apt-get install maven)"
            )
        self.say("fetching Apache Kafka broker jars from Maven Central (first run only)...")
        self.jar_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(self.pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.jar_dir}",
            "-DincludeScope=runtime",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"mvn failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
        marker.write_text("ok\n")
        return self.jar_dir

    def _start_kafka(self) -> None:
        if self._running("kafka"):
            return
        java = shutil.which("java")
        if java is None:
            raise StackError("Java is not installed; the Kafka broker needs a Java 17 runtime (Debian: openjdk-17-jre)")
        if _port_open(self.kafka_host, self.kafka_port):
            raise StackError(f"port {self.kafka_port} is taken by a process this checkout did not start")
        jars = self.ensure_jars()
        folder = self.state / "kafka"
        data = folder / "data"
        folder.mkdir(parents=True, exist_ok=True)
        props = folder / "server.properties"
        host = self.kafka_host
        props.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.bootstrap.servers={host}:{self.controller_port}\n"
            f"listeners=PLAINTEXT://{host}:{self.kafka_port},CONTROLLER://{host}:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://{host}:{self.kafka_port},CONTROLLER://{host}:{self.controller_port}\n"
            "controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={data}\nnum.partitions=12\nauto.create.topics.enable=false\n"
            "offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\nshare.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n"
            "log.retention.hours=-1\nlog.retention.bytes=-1\n"
        )
        log4j = folder / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        classpath = f"{jars}/*"
        jvm = [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
        ]
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}\n{fmt.stderr}")
        self._spawn("kafka", [*jvm, "kafka.Kafka", str(props)], folder / "kafka.log")
        self.say(f"started Kafka broker (KRaft) on {host}:{self.kafka_port} (data in {data})")

    # processes
    def _running(self, name: str) -> bool:
        pid = _read_pid(self.pid_file(name))
        return pid is not None and pid_alive(pid)

    def _spawn(self, name: str, cmd: list[str], log: Path) -> int:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(log.parent),
            )
        self.pid_file(name).write_text(f"{proc.pid}\n")
        return proc.pid


@dataclass
class ClusterStack(LocalStack):
    """Three Kafka brokers (KRaft, each also a controller: a quorum of three) and a Redis Cluster
    of three masters with a replica each, on loopback, owned by this checkout.

    Broker i (0, 1, 2) listens on the first port of `CRM_KAFKA_BOOTSTRAP` + 2i, its controller on
    the port after it; Redis node j (0..5) on the port of `CRM_REDIS_URL` + j (its cluster bus
    100 above: Redis's default, 10000 above, would fall in Linux's range of clients' ephemeral
    ports, where any connection may hold it). Topics get three replicas and
    `min.insync.replicas=2`; Redis keeps an AOF."""

    brokers: int = 3
    redis_nodes: int = 6

    @property
    def broker_ports(self) -> list[int]:
        return [self.kafka_port + 2 * i for i in range(self.brokers)]

    @property
    def redis_ports(self) -> list[int]:
        return [self.redis_port + j for j in range(self.redis_nodes)]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.kafka_host}:{p}" for p in self.broker_ports)

    def environment(self) -> dict[str, str]:
        """The settings every service, the CLI and the benchmark need to use this stack."""
        return {
            "CRM_KAFKA_BOOTSTRAP": self.bootstrap,
            "CRM_REDIS_URL": f"redis://{self.redis_host}:{self.redis_port}/0",
            "CRM_REDIS_CLUSTER": "true",
            "CRM_KAFKA_REPLICATION": str(self.brokers),
        }

    def _names(self) -> list[str]:
        return [f"kafka-{i + 1}" for i in range(self.brokers)] + [f"redis-{j + 1}" for j in range(self.redis_nodes)]

    def down(self) -> list[str]:
        """Stop every process this checkout started (services first, then Kafka, then Redis)."""
        stopped = []
        if self.pids.exists():
            ours = set(self._names())
            services = [p for p in self.pids.glob("*.pid") if p.stem not in ours]
            for path in [*services, *(self.pid_file(n) for n in self._names())]:
                if stop_pid_file(path):
                    stopped.append(path.stem)
        return stopped

    def status(self) -> dict[str, str]:
        out = {}
        for name in self._names():
            pid = _read_pid(self.pid_file(name))
            out[name] = f"running (pid {pid})" if pid and pid_alive(pid) else "stopped"
        out["kafka"] = f"{self.bootstrap}: " + ("ready" if self.kafka_ready() else "not ready")
        out["redis"] = f"cluster from {self.redis_host}:{self.redis_port}: " + (
            "ready" if self.redis_ready() else "not ready"
        )
        return out

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        for name, probe in (("redis", self._redis_nodes_ready), ("kafka", self.kafka_ready)):
            while not probe():
                for node in (n for n in self._names() if n.startswith(name)):
                    pid = _read_pid(self.pid_file(node))
                    if pid is not None and not pid_alive(pid):
                        raise StackError(f"{node} exited during start-up; see its log under {self.state / node}")
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not become ready within {timeout:.0f}s")
                time.sleep(0.5)
            if name == "redis":
                self._create_redis_cluster(deadline)
        self.say(f"kafka cluster ready on {self.bootstrap}; redis cluster ready on "
                 f"{self.redis_host}:{self.redis_ports[0]}-{self.redis_ports[-1]}")  # fmt: skip

    # readiness
    def _ping(self, port: int, command: bytes = b"PING\r\n") -> bytes:
        try:
            with socket.create_connection((self.redis_host, port), timeout=1.0) as sock:
                sock.sendall(command)
                return sock.recv(4096)
        except OSError:
            return b""

    def _redis_nodes_ready(self) -> bool:
        return all(self._ping(p).startswith(b"+PONG") for p in self.redis_ports)

    def redis_ready(self) -> bool:
        """Every node answers and the cluster says its slots are all served."""
        return self._redis_nodes_ready() and all(
            b"cluster_state:ok" in self._ping(p, b"CLUSTER INFO\r\n") for p in self.redis_ports
        )

    def kafka_ready(self) -> bool:
        """A metadata request answered with every broker listed."""
        from aiokafka import AIOKafkaClient

        async def probe() -> bool:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await asyncio.wait_for(client.bootstrap(), 5)
                return len(client.cluster.brokers()) == self.brokers
            except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                return False
            finally:
                await client.close()

        if not all(_port_open(self.kafka_host, p) for p in self.broker_ports):
            return False
        return asyncio.run(probe())

    # redis
    def _start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError("redis-server is not installed; run `make setup` (installs Debian's redis-server)")
        for j, port in enumerate(self.redis_ports):
            name = f"redis-{j + 1}"
            if self._running(name):
                continue
            for taken in (port, port + 100):
                if _port_open(self.redis_host, taken):
                    raise StackError(f"port {taken} is taken by a process this checkout did not start")
            folder = self.state / name
            folder.mkdir(parents=True, exist_ok=True)
            cluster = (
                "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 3000\n"
                f"cluster-port {port + 100}\n"
            )
            conf = _redis_conf(folder, self.redis_host, port, cluster)
            self._spawn(name, [exe, str(conf)], folder / "redis.stdout")
        self.say(f"started redis-server nodes on {self.redis_host}:{self.redis_ports[0]}-{self.redis_ports[-1]}")

    def _create_redis_cluster(self, deadline: float) -> None:
        """`redis-cli --cluster create` once (three masters, a replica each), then wait for it."""
        if b"cluster_known_nodes:1\r\n" in self._ping(self.redis_ports[0], b"CLUSTER INFO\r\n"):
            cli = shutil.which("redis-cli")
            if cli is None:
                raise StackError("redis-cli is not installed (Debian's redis-tools, with redis-server)")
            nodes = [f"{self.redis_host}:{p}" for p in self.redis_ports]
            made = subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
            if made.returncode != 0:
                raise StackError(f"redis-cli --cluster create failed:\n{made.stdout[-2000:]}\n{made.stderr[-1000:]}")
            self.say("created the Redis Cluster: three masters, one replica each")
        while not self.redis_ready():
            if time.monotonic() > deadline:
                raise StackError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.5)

    # kafka
    def _start_kafka(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise StackError("Java is not installed; the Kafka broker needs a Java 17 runtime (Debian: openjdk-17-jre)")
        jars = self.ensure_jars()
        host = self.kafka_host
        voters = ",".join(f"{i + 1}@{host}:{p + 1}" for i, p in enumerate(self.broker_ports))
        cluster_file = self.state / "kafka-cluster-id"
        if not cluster_file.exists():
            self.state.mkdir(parents=True, exist_ok=True)
            cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + "\n")
        cluster_id = cluster_file.read_text().strip()
        for i, port in enumerate(self.broker_ports):
            name = f"kafka-{i + 1}"
            if self._running(name):
                continue
            if _port_open(host, port):
                raise StackError(f"port {port} is taken by a process this checkout did not start")
            folder = self.state / name
            data = folder / "data"
            folder.mkdir(parents=True, exist_ok=True)
            props = folder / "server.properties"
            props.write_text(
                f"process.roles=broker,controller\nnode.id={i + 1}\ncontroller.quorum.voters={voters}\n"
                f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{port + 1}\n"
                f"advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{port + 1}\n"
                "controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n"
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                f"log.dirs={data}\nnum.partitions=12\nauto.create.topics.enable=false\n"
                f"default.replication.factor={self.brokers}\nmin.insync.replicas=2\n"
                f"offsets.topic.replication.factor={self.brokers}\n"
                f"transaction.state.log.replication.factor={self.brokers}\ntransaction.state.log.min.isr=2\n"
                f"share.coordinator.state.topic.replication.factor={self.brokers}\n"
                "share.coordinator.state.topic.min.isr=2\ngroup.initial.rebalance.delay.ms=0\n"
                "log.retention.hours=-1\nlog.retention.bytes=-1\n"
            )
            log4j = folder / "log4j2.properties"
            log4j.write_text(_LOG4J2)
            jvm = [java, "-Xms192m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                   f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{jars}/*"]  # fmt: skip
            if not (data / "meta.properties").exists():
                fmt = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                      "-c", str(props)], capture_output=True, text=True)  # fmt: skip
                if fmt.returncode != 0:
                    raise StackError(f"formatting Kafka storage of {name} failed:\n{fmt.stdout}\n{fmt.stderr}")
            self._spawn(name, [*jvm, "kafka.Kafka", str(props)], folder / "kafka.log")
        self.say(f"started {self.brokers} Kafka brokers (KRaft, a quorum of {self.brokers}) on {self.bootstrap}")
