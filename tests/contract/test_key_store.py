"""One contract for the key store, run against real SQLite and real PostgreSQL: keys per
subject, erasure final and without resurrection, and the erased key gone from the store's files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.keystore import InMemoryKeyStore, KeyStore, SubjectErasedError
from shared.personal import open_value, seal
from tests.conftest import fresh_database


@contextlib.asynccontextmanager
async def open_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[KeyStore]:
    if kind == "memory":
        yield InMemoryKeyStore()  # type: ignore[misc]
        return
    if kind == "sqlite":
        ks = KeyStore(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
        yield ks
        await ks.close()
        return
    server_url: str = request.getfixturevalue("postgres_url")
    async with fresh_database(server_url, "keys") as url:
        ks = KeyStore(url)
        try:
            yield ks
        finally:
            await ks.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_store(request.param, request, tmp_path) as ks:
        yield ks


@pytest.fixture(params=["sqlite", "postgresql"])
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    async with open_store(request.param, request, tmp_path) as ks:
        yield ks


async def test_one_key_per_subject_created_once_even_concurrently(store: KeyStore) -> None:
    keys = await asyncio.gather(*(store.key_for("ada") for _ in range(8)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    other = await store.key_for("bob")
    assert other != keys[0]
    assert await store.keys(["ada", "bob", "nobody"]) == {"ada": keys[0], "bob": other}


async def test_erase_is_final_and_leaves_others_readable(store: KeyStore) -> None:
    ada, bob = await store.key_for("ada"), await store.key_for("bob")
    sealed_ada, sealed_bob = seal("Ada", "ada", ada), seal("Bob", "bob", bob)
    assert await store.erase("ada") is True
    assert await store.erase("ada") is False  # idempotent
    keys = await store.keys(["ada", "bob"])
    assert keys == {"bob": bob}
    assert open_value(sealed_ada, keys) is None
    assert open_value(sealed_bob, keys) == "Bob"
    with pytest.raises(SubjectErasedError, match="was erased"):
        await store.key_for("ada")  # no resurrection with a fresh key
    assert await store.erased_at("ada") is not None
    assert await store.erased_at("bob") is None


async def test_keys_for_many_creates_what_is_missing_in_one_go(store: KeyStore) -> None:
    """A batch of registrations: existing keys are kept, missing ones created, erased subjects
    get none; the answer agrees with key_for."""
    ada = await store.key_for("ada")
    await store.erase("gone")
    subjects = ["ada", "gone", *(f"s{i}" for i in range(1200))]  # more than one chunk
    got = await store.keys_for(subjects)
    assert set(got) == set(subjects) - {"gone"}
    assert got["ada"] == ada
    assert got["s7"] == await store.key_for("s7")
    assert await store.keys_for(subjects) == got  # idempotent


async def test_erasing_an_unknown_subject_blocks_future_keys(store: KeyStore) -> None:
    assert await store.erase("ghost") is False
    with pytest.raises(SubjectErasedError):
        await store.key_for("ghost")


async def _pg_table_file(store: KeyStore) -> Path | None:
    """The data file of the keys table, if this process can read the server's files."""
    conn = await asyncpg.connect(store.url, timeout=10)
    try:
        await conn.execute("CHECKPOINT")  # dirty buffers to the data files
        data_dir = await conn.fetchval("SHOW data_directory")
        relative = await conn.fetchval("SELECT pg_relation_filepath('subject_keys')")
    finally:
        await conn.close()
    path = Path(data_dir) / relative
    try:
        path.read_bytes()
    except OSError:
        return None
    return path


async def test_erased_key_bytes_are_gone_from_the_store_files(durable: KeyStore) -> None:
    store = durable
    ada, bob = await store.key_for("ada"), await store.key_for("bob")
    if store.dialect == "sqlite":
        db = Path(store.url.split(":///", 1)[1])
        await store.close()  # nothing cached in a connection
        assert ada in db.read_bytes()  # noqa: ASYNC240
        await store.erase("ada")
        await store.close()
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        assert files == [db], "no journal or WAL file may outlive the erasure"
        data = db.read_bytes()  # noqa: ASYNC240
    else:
        before = await _pg_table_file(store)
        if before is None:
            pytest.skip("the PostgreSQL server's files are not readable from this process")
        assert ada in before.read_bytes()
        await store.erase("ada")
        after = await _pg_table_file(store)
        assert after is not None and after != before, "VACUUM FULL rewrites the table"
        assert not before.exists() or ada not in before.read_bytes()
        data = after.read_bytes()
    assert ada not in data
    assert bob in data


async def test_processes_creating_the_table_at_once_all_succeed(postgres_url: str) -> None:
    """The command service and the query service open a new key store at the same moment."""
    async with fresh_database(postgres_url, "keys") as url:
        stores = [KeyStore(url) for _ in range(4)]
        try:
            keys = await asyncio.gather(*(s.key_for("ada") for s in stores))
            assert len(set(keys)) == 1
        finally:
            for s in stores:
                await s.close()
