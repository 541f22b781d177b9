"""A real Apache Kafka broker (KRaft) as local processes, without Docker.

The broker's jars are resolved by Maven from the committed descriptor `kafka-pom.xml` into a cache
outside git (`$ESCTL_CACHE_DIR`, default `~/.cache/esctl`). A cluster of 1 or 3 combined
broker+controller nodes runs on 127.0.0.1; its state (ports, pids, cluster id) lives in
`<data_dir>/cluster.json`, so `esctl kafka stop` in another shell stops exactly what `start`
started, and nothing else: a pid is only signalled if its command line names this data dir.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from esctl.localstack import kafka_security as ks
from shared.errors import ConfigurationError, InfrastructureUnavailable
from shared.kafka.acls import BROKER, PRINCIPALS, SUPER_USERS
from shared.kafka.clients import wait_for_brokers
from shared.kafka.security import KafkaSecurity
from shared.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

POM = "kafka-pom.xml"
LOG4J = "log4j2.properties"


def _resource(name: str) -> Path:
    return Path(str(resources.files("esctl.localstack").joinpath(name)))


def kafka_version() -> str:
    """The broker version pinned in the Maven descriptor."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", _resource(POM).read_text())
    if match is None:  # pragma: no cover - the descriptor is committed with the property
        raise ConfigurationError(f"{POM} has no <kafka.version>")
    return match.group(1)


def cache_dir() -> Path:
    return Path(os.environ.get("ESCTL_CACHE_DIR", Path.home() / ".cache" / "esctl"))


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{kafka_version()}" / "libs"


def _pom_digest() -> str:
    return hashlib.sha256(_resource(POM).read_bytes()).hexdigest()


def is_installed() -> bool:
    marker = libs_dir() / ".complete"
    return marker.exists() and marker.read_text().strip() == _pom_digest()


def install(*, quiet: bool = True) -> Path:
    """Resolve the broker jars with Maven into the cache (no-op when already there)."""
    libs = libs_dir()
    if is_installed():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigurationError(
            "Maven (mvn) is needed to resolve the Kafka broker jars: apt-get install maven"
        )
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(_resource(POM)),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout or "")[-2000:] + (result.stderr or "")[-2000:]
        raise InfrastructureUnavailable(f"mvn could not resolve Kafka {kafka_version()}:\n{tail}")
    (libs / ".complete").write_text(_pom_digest())
    return libs


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ConfigurationError(
            "Java 17+ is needed for the Kafka broker: apt-get install "
            "openjdk-17-jre-headless, or set JAVA_HOME"
        )
    return java


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _kafka_uuid() -> str:
    """A cluster id in Kafka's format (URL-safe base64 of 16 bytes, no padding)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class NodeState:
    node_id: int
    broker_port: int
    controller_port: int
    pid: int | None = None
    #: a second client listener, PROXIED, on this port, advertised as `proxied_advertised`
    #: (a TCP proxy in front of it): see `LocalKafkaCluster.add_proxied_listener`
    proxied_port: int | None = None
    proxied_advertised: str | None = None


@dataclass
class ClusterState:
    cluster_id: str
    nodes: list[NodeState] = field(default_factory=list)
    heap_mb: int = 512
    #: SASL_SSL with SCRAM-SHA-512 and ACLs (see kafka_security), or PLAINTEXT
    secure: bool = False


class LocalKafkaCluster:
    """1 or 3 KRaft nodes (each broker+controller) on 127.0.0.1 under `data_dir`."""

    def __init__(self, data_dir: Path, state: ClusterState) -> None:
        self.data_dir = data_dir.resolve()
        self.state = state

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        data_dir: Path,
        *,
        nodes: int = 1,
        port: int | None = None,
        heap_mb: int = 512,
        secure: bool = False,
    ) -> LocalKafkaCluster:
        """A new cluster description (nothing started). `port` is node 1's broker port;
        `secure`: TLS, SASL/SCRAM and ACLs."""
        if nodes not in (1, 3):
            raise ConfigurationError("a local cluster has 1 or 3 nodes")
        if not 64 <= heap_mb <= 512:
            raise ConfigurationError("broker heap must be between 64 and 512 MiB")
        state = ClusterState(cluster_id=_kafka_uuid(), heap_mb=heap_mb, secure=secure)
        for i in range(1, nodes + 1):
            broker = port + i - 1 if port else free_port()
            state.nodes.append(NodeState(i, broker, free_port()))
        return cls(data_dir, state)

    @classmethod
    def load(cls, data_dir: Path) -> LocalKafkaCluster | None:
        path = data_dir / "cluster.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        state = ClusterState(
            cluster_id=raw["cluster_id"],
            heap_mb=raw.get("heap_mb", 512),
            secure=raw.get("secure", False),
            nodes=[NodeState(**n) for n in raw["nodes"]],
        )
        return cls(data_dir, state)

    def save(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "cluster.json").write_text(json.dumps(asdict(self.state), indent=2))

    # -- properties --------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.state.nodes)

    @property
    def security_dir(self) -> Path:
        """Where a secure cluster keeps its CA, certificate and passwords."""
        return self.data_dir / "security"

    @property
    def admin_security(self) -> KafkaSecurity | None:
        """How the launcher itself connects: as `admin` on a secure cluster, else PLAINTEXT
        (None: the process's own security would be used, which may be another principal)."""
        if not self.state.secure:
            return KafkaSecurity()
        return ks.client_security(self.security_dir, "admin")

    def client_env(self, principal: str = "admin") -> dict[str, str]:
        """The environment variables of a client of this cluster acting as `principal`."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        if self.state.secure:
            env |= ks.client_env(self.security_dir, principal)
        return env

    def node(self, node_id: int) -> NodeState:
        for n in self.state.nodes:
            if n.node_id == node_id:
                return n
        raise ConfigurationError(
            f"no node {node_id}; nodes are {[n.node_id for n in self.state.nodes]}"
        )

    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def add_proxied_listener(self, node_id: int, advertised: str) -> int:
        """Give node `node_id` a second client listener, PROXIED, on a free port of its own
        (returned), advertised as `advertised`: the address of a TCP proxy (Toxiproxy) that
        forwards to that port. Clients bootstrap from the addresses they are given but then
        connect to the advertised ones, so a client that bootstraps through the proxy stays
        behind it, while one that bootstraps on the PLAINTEXT listener keeps reaching the
        broker directly. Set before `start` (or before a `restart` of the node); PLAINTEXT
        clusters only."""
        if self.state.secure:
            raise ConfigurationError("a proxied listener is for PLAINTEXT clusters only")
        node = self.node(node_id)
        node.proxied_port = node.proxied_port or free_port()
        node.proxied_advertised = advertised
        self.save()
        return node.proxied_port

    def _config_path(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "server.properties"

    def server_properties(self, node: NodeState) -> dict[str, str]:
        n = len(self.state.nodes)
        voters = ",".join(f"{x.node_id}@127.0.0.1:{x.controller_port}" for x in self.state.nodes)
        rf = str(n)
        return {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.node_dir(node.node_id) / "data"),
            # Transactions on one node need these internal topics at the cluster's size.
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": "1" if n == 1 else "2",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": "1" if n == 1 else "2",
            "default.replication.factor": rf,
            "min.insync.replicas": "1" if n == 1 else "2",
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.messages": "9223372036854775807",
            "delete.topic.enable": "true",
            # Local clusters notice a dead broker in seconds rather than the production defaults
            # (9 s fencing, 30 s ISR lag), so durability experiments do not idle.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "replica.lag.time.max.ms": "5000",
        } | (self._secure_properties(node) if self.state.secure else self._proxied(node))

    @staticmethod
    def _proxied(node: NodeState) -> dict[str, str]:
        """The listeners with the PROXIED one (`add_proxied_listener`), or nothing."""
        if node.proxied_port is None or node.proxied_advertised is None:
            return {}
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},"
            f"PROXIED://127.0.0.1:{node.proxied_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},"
            f"PROXIED://{node.proxied_advertised}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,"
            "CONTROLLER:PLAINTEXT",
        }

    def _secure_properties(self, node: NodeState) -> dict[str, str]:
        """SASL_SSL everywhere. Clients and brokers (inter-broker) use SCRAM-SHA-512, whose
        credentials KRaft takes at format time (`--add-scram`); the controller listener uses
        PLAIN with the broker's password in this file (KRaft controllers cannot check SCRAM
        before they have read the metadata that holds it)."""
        sec = self.security_dir
        broker_password = ks.password(sec, BROKER)
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER}" password="{broker_password}";'
        )
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER}" password="{broker_password}" '
            f'user_{BROKER}="{broker_password}";'
        )
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{node.broker_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.broker_port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
            "sasl.mechanism.inter.broker.protocol": ks.MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": ks.MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(sec / "node.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(sec / "ca.pem"),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(f"User:{u}" for u in SUPER_USERS),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 90.0, wait: bool = True) -> None:
        """Format storage where needed, start every node that is not running, wait for all."""
        install()
        self.save()
        if self.state.secure:
            ks.generate(self.security_dir)
        for node in self.state.nodes:
            if not self._alive(node):
                self._start_node(node)
        self.save()
        if wait:
            self.wait_ready(timeout_s=timeout_s)
            if self.state.secure:
                # idempotent: each start makes sure the services' ACLs are there
                run_sync(ks.grant(self.security_dir, self.bootstrap_servers, ks.default_bindings()))

    def wait_ready(self, *, timeout_s: float = 90.0, expected: int | None = None) -> None:
        """Wait until a metadata request lists every node (or `expected` of them) as a broker."""
        run_sync(self.wait_ready_async(timeout_s=timeout_s, expected=expected))

    async def wait_ready_async(
        self, *, timeout_s: float = 90.0, expected: int | None = None
    ) -> None:
        want = expected if expected is not None else len(self.state.nodes)
        try:
            await wait_for_brokers(
                self.bootstrap_servers,
                expected_brokers=want,
                timeout_s=timeout_s,
                security=self.admin_security,
            )
        except InfrastructureUnavailable as exc:
            logs = "\n".join(self._log_tail(n.node_id) for n in self.state.nodes)
            raise InfrastructureUnavailable(f"{exc.message}\n{logs}") from None

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop every node this cluster started (SIGTERM, then SIGKILL after `timeout_s`).

        All nodes get SIGTERM at once: stopped one by one, the last ones would lose their
        controller quorum and wait out their controlled-shutdown timeout.
        """
        for node in self.state.nodes:
            if node.pid is not None and self._owns(node.pid, node.node_id):
                os.kill(node.pid, signal.SIGTERM)
        for node in self.state.nodes:
            self._signal_and_wait(node, signal.SIGTERM, timeout_s, send=False)
            node.pid = None
        self.save()

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: a crash, with no clean shutdown."""
        node = self.node(node_id)
        self._signal_and_wait(node, signal.SIGKILL, 10.0)
        node.pid = None
        self.save()

    def restart(self, node_id: int, *, wait: bool = True, timeout_s: float = 90.0) -> None:
        """Start one node again (after `kill` or `stop`) and wait for the full cluster."""
        node = self.node(node_id)
        if self._alive(node):
            self._signal_and_wait(node, signal.SIGTERM, 30.0)
        for attempt in (1, 2):
            self._start_node(node)
            self.save()
            if not wait:
                return
            try:
                # Ask the restarted node itself: the others may still list it as a broker.
                run_sync(
                    wait_for_brokers(
                        f"127.0.0.1:{node.broker_port}",
                        expected_brokers=len(self.state.nodes),
                        timeout_s=timeout_s,
                        security=self.admin_security,
                    )
                )
                return
            except InfrastructureUnavailable as exc:
                logs = self._log_tail(node_id)
                if attempt == 1 and not self._alive(node):
                    # the JVM died while starting (seen once in CI, right after a kill -9):
                    # start it once more, with what it said in the log
                    log.warning("kafka_node_restart_failed_retrying", node=node_id, logs=logs)
                    continue
                raise InfrastructureUnavailable(f"{exc.message}\n{logs}") from None

    def status(self) -> dict[int, bool]:
        """Whether each node's process is alive (not whether it serves requests)."""
        return {n.node_id: self._alive(n) for n in self.state.nodes}

    def destroy(self) -> None:
        """Kill everything (the data is deleted anyway) and delete the data directory."""
        for node in self.state.nodes:
            self._signal_and_wait(node, signal.SIGKILL, 10.0)
            node.pid = None
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- internals ---------------------------------------------------------------------------

    def _start_node(self, node: NodeState) -> None:
        nd = self.node_dir(node.node_id)
        nd.mkdir(parents=True, exist_ok=True)
        config = self._config_path(node.node_id)
        if self.state.secure:  # it holds the broker's password (controller listener)
            config.touch(mode=0o600)
            config.chmod(0o600)
        config.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties(node).items()))
        classpath = f"{libs_dir()}/*"
        java = java_executable()
        if not (nd / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    java,
                    "-Xmx256m",
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    # one argument: a cluster id may start with "-" (base64url), which
                    # argparse would otherwise take for an option
                    f"--cluster-id={self.state.cluster_id}",
                    "-c",
                    str(config),
                    "--ignore-formatted",
                    *self._scram_arguments(),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise InfrastructureUnavailable(
                    f"formatting KRaft storage of node {node.node_id} failed:\n"
                    f"{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}"
                )
        for port in (node.broker_port, node.controller_port):
            # A just-killed JVM lets go of its sockets only when its last thread has exited,
            # which can be a moment after the process turned into a zombie.
            deadline = time.monotonic() + 10
            while _port_in_use(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _port_in_use(port):
                raise ConfigurationError(
                    f"port {port} on 127.0.0.1 is already in use; choose another with --port "
                    f"or stop what listens there"
                )
        heap = self.state.heap_mb
        cmd = [
            java,
            f"-Xmx{heap}m",
            f"-Xms{min(heap, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_resource(LOG4J)}",
            f"-Dkafka.logs.dir={nd}",
            f"-Desctl.node.dir={nd}",  # marks the process as ours: see _owns()
            "-cp",
            classpath,
            "kafka.Kafka",
            str(config),
        ]
        with open(nd / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        node.pid = proc.pid

    def _scram_arguments(self) -> list[str]:
        """`--add-scram` of every principal: KRaft's SCRAM credentials start in the metadata
        written at format time (there is no ZooKeeper to add them to before the start)."""
        if not self.state.secure:
            return []
        return [
            f"--add-scram={ks.MECHANISM}=[name={p},password={ks.password(self.security_dir, p)}]"
            for p in PRINCIPALS
        ]

    def _owns(self, pid: int, node_id: int) -> bool:
        """True when `pid` is alive and is this cluster's node `node_id` (not a reused pid)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        marker = f"-Desctl.node.dir={self.node_dir(node_id)}".encode()
        if marker not in cmdline:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def _alive(self, node: NodeState) -> bool:
        return node.pid is not None and self._owns(node.pid, node.node_id)

    def _signal_and_wait(
        self, node: NodeState, sig: signal.Signals, timeout_s: float, *, send: bool = True
    ) -> None:
        if node.pid is None or not self._owns(node.pid, node.node_id):
            return
        if send:
            os.kill(node.pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(node.pid)
            if not self._owns(node.pid, node.node_id):
                return
            time.sleep(0.1)
        if sig != signal.SIGKILL:
            os.kill(node.pid, signal.SIGKILL)
            self._signal_and_wait(node, signal.SIGKILL, 10.0)

    def _log_tail(self, node_id: int, lines: int = 30) -> str:
        out = []
        for name in ("stdout.log", "server.log"):
            path = self.node_dir(node_id) / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- node {node_id} {name}\n" + "\n".join(tail))
        return "\n".join(out)


def _reap(pid: int) -> None:
    """Collect a child that exited (when we are its parent) so it is not left a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
