"""Where the test suite gets its real Kafka and PostgreSQL from.

Order, for each: an address from the environment (`KAFKA_BOOTSTRAP_SERVERS`,
`TEST_POSTGRES_URL`); else testcontainers when a container engine answers (Docker, or podman's
Docker-compatible socket via DOCKER_HOST); else the project's local launchers. Set
`ESCTL_TEST_INFRA=local|container` to force one. Whatever is started here is stopped here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.localstack.kafka import LocalKafkaCluster, free_port
from shared.localstack.postgres import LocalPostgres

KAFKA_IMAGE = os.environ.get("KAFKA_IMAGE", "apache/kafka:4.1.1")
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:16")


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
def kafka_broker() -> Iterator[str]:
    """Yield a bootstrap address of a real broker for the whole session."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if container_engine_reachable():
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server()
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
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()
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
