"""One contract for the key store, run against real SQLite and real PostgreSQL: keys per
subject, erasure final and without resurrection, and the erased key gone from the store's files."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.kek import KeyRing, new_kek
from shared.keystore import InMemoryKeyStore, KeyStore, SubjectErasedError
from shared.personal import open_value, seal
from tests.conftest import fresh_database

#: the KEK of these tests' stores
RING = KeyRing(new_kek())


@contextlib.asynccontextmanager
async def open_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[KeyStore]:
    if kind == "memory":
        yield InMemoryKeyStore()  # type: ignore[misc]
        return
    if kind == "sqlite":
        ks = KeyStore(f"sqlite:///{tmp_path / 'keys.sqlite3'}", RING)
        yield ks
        await ks.close()
        return
    server_url: str = request.getfixturevalue("postgres_url")
    async with fresh_database(server_url, "keys") as url:
        ks = KeyStore(url, RING)
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


async def _wrapped_key(store: KeyStore, subject: str) -> bytes:
    """The subject's key as the table stores it (wrapped), read around the store."""
    if store.dialect == "sqlite":
        with sqlite3.connect(store.url.split(":///", 1)[1]) as db:
            row = db.execute(
                "SELECT key FROM subject_keys WHERE subject = ?", (subject,)
            ).fetchone()
        return bytes(row[0])
    conn = await asyncpg.connect(store.url, timeout=10)
    try:
        return bytes(
            await conn.fetchval("SELECT key FROM subject_keys WHERE subject = $1", subject)
        )
    finally:
        await conn.close()


async def test_erased_key_bytes_are_gone_from_the_store_files(durable: KeyStore) -> None:
    """The erased subject's stored (wrapped) key is in no file of the store once erase returns;
    the other subject's is; no data key is ever in a file in the clear."""
    store = durable
    ada, bob = await store.key_for("ada"), await store.key_for("bob")
    ada_stored, bob_stored = await _wrapped_key(store, "ada"), await _wrapped_key(store, "bob")
    if store.dialect == "sqlite":
        db = Path(store.url.split(":///", 1)[1])
        await store.close()  # nothing cached in a connection
        before = db.read_bytes()  # noqa: ASYNC240
        assert ada_stored in before and ada not in before and bob not in before
        await store.erase("ada")
        await store.close()
        files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        assert files == [db], "no journal or WAL file may outlive the erasure"
        data = db.read_bytes()  # noqa: ASYNC240
    else:
        table = await _pg_table_file(store)
        if table is None:
            pytest.skip("the PostgreSQL server's files are not readable from this process")
        before = table.read_bytes()
        assert ada_stored in before and ada not in before and bob not in before
        await store.erase("ada")
        after = await _pg_table_file(store)
        assert after is not None and after != table, "VACUUM FULL rewrites the table"
        assert not table.exists() or ada_stored not in table.read_bytes()
        data = after.read_bytes()
    assert ada_stored not in data
    assert bob_stored in data


async def test_processes_creating_the_table_at_once_all_succeed(postgres_url: str) -> None:
    """The command service and the query service open a new key store at the same moment."""
    async with fresh_database(postgres_url, "keys") as url:
        stores = [KeyStore(url, RING) for _ in range(4)]
        try:
            keys = await asyncio.gather(*(s.key_for("ada") for s in stores))
            assert len(set(keys)) == 1
        finally:
            for s in stores:
                await s.close()
