"""Session-wide real infrastructure and per-test isolation (unique topics and groups)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from esctl.localstack.kafka import free_port
from esctl.localstack.postgres import LocalPostgres
from esctl.localstack.services import ServiceProcess
from shared.kafka.topics import TopicSpec, ensure_topics
from shared.kek import KeyRing, ensure_kek_file
from shared.logging import configure_logging
from shared.settings import KeyEncryptionSettings
from tests import infra
from tests.kafka_helpers import delete_topics

configure_logging("console", "warning")

# Authentication is on in every tier, as in production: the services that tests start (child
# processes inherit the environment) verify tokens signed with this secret, one per session
# unless configured; tests/e2e/harness.py mints with it.
os.environ.setdefault("AUTH_HS256_SECRET", secrets.token_urlsafe(32))


@pytest.fixture(scope="session", autouse=True)
def key_store_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Services started by tests share a key store of their own (not ./var/keys.sqlite3, the
    local stack's): every child process inherits KEY_STORE_URL."""
    url = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'keys.sqlite3'}"
    before = os.environ.get("KEY_STORE_URL")
    os.environ["KEY_STORE_URL"] = url
    yield url
    if before is None:
        os.environ.pop("KEY_STORE_URL", None)
    else:
        os.environ["KEY_STORE_URL"] = before


@pytest.fixture(scope="session", autouse=True)
def key_encryption_key_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Services started by tests wrap their keys with a KEK of the session (made like `esctl
    up` makes its local one): every child process inherits KEY_ENCRYPTION_KEY_FILE. A KEK
    configured in the environment is used as it is."""
    if os.environ.get("KEY_ENCRYPTION_KEY") or os.environ.get("KEY_ENCRYPTION_KEY_FILE"):
        yield os.environ.get("KEY_ENCRYPTION_KEY_FILE", "")
        return
    path = tmp_path_factory.mktemp("kek") / "key-encryption-key"
    ensure_kek_file(path)
    os.environ["KEY_ENCRYPTION_KEY_FILE"] = str(path)
    yield str(path)
    os.environ.pop("KEY_ENCRYPTION_KEY_FILE", None)


def session_keyring() -> KeyRing:
    """The KEKs the session's services use (for tests that open their key store directly)."""
    return KeyRing.from_settings(KeyEncryptionSettings())


@pytest.fixture(autouse=True)
def no_service_outlives_its_test() -> Iterator[None]:
    """A test that fails before stopping the services it started (a fixture whose setup fails
    halfway, an assertion before the `finally`) must not leave them running into the next one."""
    yield
    leftovers = ServiceProcess.terminate_leftovers()
    if leftovers:
        logging.getLogger(__name__).warning("stopped leftover service processes %s", leftovers)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker for the session (env, container, or local launcher)."""
    with infra.kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL for the session (env, container, or local launcher)."""
    with infra.postgres_server() as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str = "db") -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the session's server, dropped afterwards: its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test."""
    async with fresh_database(postgres_url, "test") as url:
        yield url


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_topic(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics for one test; delete them afterwards."""
    created: list[str] = []

    async def factory(prefix: str = "t", partitions: int = 1, **configs: str) -> str:
        name = unique(prefix)
        await ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, 1, configs)])
        created.append(name)
        return name

    yield factory
    if created:
        await delete_topics(kafka_bootstrap, created)


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    """A PostgreSQL server of one test alone (the test may stop it, or shut it down hard), its
    WAL writer slowed so that relaxed commits wait long to be written: a crash loses the last
    ones. Never the session's server."""
    data = Path(tempfile.mkdtemp(prefix="esctl-own-pg-"))
    data.chmod(0o755)  # noqa: ASYNC240  # the server runs as `postgres` (root): let it in
    pg = LocalPostgres(data / "data", port=free_port())
    await asyncio.to_thread(pg.start)
    try:
        conn = await asyncpg.connect(pg.url, timeout=10)
        try:
            await conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            await conn.execute("ALTER SYSTEM SET wal_writer_flush_after = '1GB'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        yield pg
    finally:
        await asyncio.to_thread(pg.destroy)
        shutil.rmtree(data, ignore_errors=True)
