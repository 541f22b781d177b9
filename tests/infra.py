"""Where the test suite gets its real Kafka and PostgreSQL from.

Order, for each: an address from the environment (`KAFKA_BOOTSTRAP_SERVERS`,
`TEST_POSTGRES_URL`); else testcontainers when a container engine answers (Docker, or podman's
Docker-compatible socket via DOCKER_HOST); else the project's local launchers. Set
`ESCTL_TEST_INFRA=local|container` to force one. Whatever is started here is stopped here.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from esctl.localstack.kafka import LocalKafkaCluster, free_port
from esctl.localstack.postgres import LocalPostgres

KAFKA_IMAGE = os.environ.get("KAFKA_IMAGE", "apache/kafka:4.1.1")
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:16")


def container_limits() -> dict[str, object]:
    """Explicit rlimits for test containers, within this process's own: an engine's defaults
    (podman's compat API: nofile 1048576 unless containers.conf lowers them for the service
    that answers) can exceed a sandbox's hard limits, and then every container fails to start
    with "error setting rlimits ... operation not permitted"."""
    from docker.types import Ulimit  # noqa: PLC0415  # only when testcontainers is used

    def capped(kind: int, cap: int) -> int:
        hard = resource.getrlimit(kind)[1]
        return cap if hard == resource.RLIM_INFINITY else min(hard, cap)

    return {
        "ulimits": [
            Ulimit(
                name="nofile",
                soft=capped(resource.RLIMIT_NOFILE, 65536),
                hard=capped(resource.RLIMIT_NOFILE, 65536),
            ),
            Ulimit(
                name="nproc",
                soft=capped(resource.RLIMIT_NPROC, 4096),
                hard=capped(resource.RLIMIT_NPROC, 4096),
            ),
        ]
    }


def container_engine_reachable() -> bool:
    mode = os.environ.get("ESCTL_TEST_INFRA", "")
    if mode == "local":
        return False
    try:
        import docker  # noqa: PLC0415  # only when testcontainers may be used

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:  # no engine, no socket, no permission: all mean "not reachable"
        if mode == "container":
            raise
        return False
    return True


@contextmanager
def kafka_container(image: str = KAFKA_IMAGE) -> Iterator[str]:
    """A single-node KRaft broker in a container (testcontainers), for the official
    `apache/kafka` image and the project's local one alike (both read KAFKA_* variables).

    The broker port is bound to the same number on the host, so the address it advertises
    (127.0.0.1:port) is right inside and outside the container, under Docker and podman.
    """
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    from shared.kafka.clients import wait_for_brokers  # noqa: PLC0415

    port = free_port()
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_HEAP_OPTS": "-Xmx512m -Xms128m",
    }
    container = DockerContainer(image, **container_limits()).with_bind_ports(port, port)
    for name, value in env.items():
        container = container.with_env(name, value)
    with container:
        bootstrap = f"127.0.0.1:{port}"
        asyncio.run(wait_for_brokers(bootstrap, timeout_s=120))
        yield bootstrap


@contextmanager
def postgres_container(image: str = POSTGRES_IMAGE) -> Iterator[str]:
    """PostgreSQL in a container (official `postgres` image or the project's local one)."""
    import asyncpg  # noqa: PLC0415
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    port = free_port()
    container = (
        DockerContainer(image, **container_limits())
        .with_bind_ports(5432, port)
        .with_env("POSTGRES_USER", "esctl")
        .with_env("POSTGRES_PASSWORD", "esctl")
        .with_env("POSTGRES_DB", "esctl")
    )
    url = f"postgresql://esctl:esctl@127.0.0.1:{port}/esctl"

    async def ready() -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = await asyncpg.connect(url, timeout=3)
                await conn.close()
                return
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    with container:
        asyncio.run(ready())
        yield url


def kafka_secure() -> bool:
    """ESCTL_TEST_KAFKA_SECURE=1: the session's broker is a local `--secure` one (TLS,
    SASL/SCRAM, ACLs); the tests act as `admin`, every service process as its own principal."""
    return os.environ.get("ESCTL_TEST_KAFKA_SECURE", "") not in ("", "0")


@contextmanager
def secure_kafka_broker() -> Iterator[str]:
    """A local secure cluster; this process's environment gets `admin`'s credentials (which
    child processes inherit) and ESCTL_KAFKA_SECURITY_DIR (ServiceProcess switches each service
    to its own principal, with its ACLs on the prefix it is started with)."""
    from esctl.localstack.kafka_security import SECURITY_DIR_ENV  # noqa: PLC0415
    from shared.kafka.security import reset_security  # noqa: PLC0415

    data_dir = Path(tempfile.mkdtemp(prefix="esctl-test-kafka-secure-"))
    cluster = LocalKafkaCluster.create(data_dir, nodes=1, heap_mb=512, secure=True)
    before = dict(os.environ)
    try:
        cluster.start()
        env = cluster.client_env("admin")
        env.pop("KAFKA_BOOTSTRAP_SERVERS")  # the tests pass the address where they mean to
        os.environ.update(env)
        os.environ[SECURITY_DIR_ENV] = str(cluster.security_dir)
        reset_security()
        yield cluster.bootstrap_servers
    finally:
        os.environ.clear()
        os.environ.update(before)
        reset_security()
        cluster.destroy()


@contextmanager
def kafka_broker() -> Iterator[str]:
    """Yield a bootstrap address of a real broker for the whole session."""
    if kafka_secure():
        with secure_kafka_broker() as bootstrap:
            yield bootstrap
        return
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if container_engine_reachable():
        with kafka_container() as bootstrap:
            yield bootstrap
        return
    data_dir = Path(tempfile.mkdtemp(prefix="esctl-test-kafka-"))
    cluster = LocalKafkaCluster.create(data_dir, nodes=1, heap_mb=512)
    try:
        cluster.start()
        yield cluster.bootstrap_servers
    finally:
        cluster.destroy()


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a PostgreSQL URL for the whole session."""
    if os.environ.get("TEST_POSTGRES_URL"):
        yield os.environ["TEST_POSTGRES_URL"]
        return
    if container_engine_reachable():
        with postgres_container() as url:
            yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="esctl-test-pg-"))
    data_dir.chmod(0o755)  # the server runs as `postgres` when we are root: let it enter
    pg = LocalPostgres(data_dir / "data", port=free_port())
    try:
        pg.start()
        yield pg.url
    finally:
        pg.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)
