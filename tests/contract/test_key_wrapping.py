"""Envelope encryption of the key store, against real SQLite and real PostgreSQL: the key table
dumped raw opens no personal field without the key-encryption key (and does with it), a rotation
keeps every key readable, a wrong or missing KEK is a clear error, a store from before wrapping is
wrapped when first opened, and the unwrap cache never outlives an erasure."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.kek import KekError, KeyRing, KeyUnwrapError, new_kek
from shared.keystore import REWRAP_BATCH, KeyStore, SubjectErasedError
from shared.personal import KEY_BYTES, new_key, open_value, seal
from tests.conftest import fresh_database

OLD, NEW, STRANGER = new_kek(), new_kek(), new_kek()


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty key store's URL, SQLite or PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.sqlite3'}"
        return
    server_url: str = request.getfixturevalue("postgres_url")
    async with fresh_database(server_url, "keys") as db_url:
        yield db_url


@contextlib.asynccontextmanager
async def opened(url: str, ring: KeyRing | None) -> AsyncIterator[KeyStore]:
    store = KeyStore(url, ring)
    try:
        yield store
    finally:
        await store.close()


async def sql(url: str, statement: str, *args: Any) -> list[dict[str, Any]]:
    """Run one statement on the store's database around the key store (`?` placeholders):
    the rows, every column, as the database has them."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.split(":///", 1)[1])) as db, db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(statement, args).fetchall()]
    n = 0

    def numbered(_: Any) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [dict(r) for r in await conn.fetch(re.sub(r"\?", numbered, statement), *args)]
    finally:
        await conn.close()


def candidate_keys(dump: list[dict[str, Any]]) -> list[bytes]:
    """Everything in a dump that could be used as an AES-256 key: each value's bytes, and every
    32-byte window of them."""
    found: list[bytes] = []
    for row in dump:
        for value in row.values():
            if value is None:
                continue
            raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            found.append(raw)
            found += [raw[i : i + KEY_BYTES] for i in range(max(0, len(raw) - KEY_BYTES) + 1)]
    return found


async def test_the_key_table_dumped_raw_opens_nothing_without_the_kek(url: str) -> None:
    """Personal fields sealed with the store's keys; the table dumped raw (every row, every
    column): no data key in it, and nothing in it opens a sealed field; with the KEK, each row
    unwraps to the key that opens its subject's fields."""
    subjects = [f"author-{i}" for i in range(5)]
    async with opened(url, KeyRing(OLD)) as store:
        keys = await store.keys_for(subjects)
        sealed = {s: seal(f"{s}@example.org", s, keys[s]) for s in subjects}
        assert {s: open_value(v, keys) for s, v in sealed.items()} == {
            s: f"{s}@example.org" for s in subjects
        }
    dump = await sql(url, "SELECT * FROM subject_keys")
    assert sorted(r["subject"] for r in dump) == subjects
    blob = b"".join(candidate_keys(dump))
    for s in subjects:
        assert keys[s] not in blob, "a data key in the clear"
    for s, value in sealed.items():
        for candidate in candidate_keys(dump):
            assert open_value(value, {s: candidate}) is None
    # the same dump and the KEK open everything
    ring = KeyRing(OLD)
    for row in dump:
        key = ring.unwrap(row["subject"], row["kek_id"], bytes(row["key"]))
        assert open_value(sealed[row["subject"]], {row["subject"]: key}) == (
            f"{row['subject']}@example.org"
        )
    # and a wrong KEK opens nothing, with a reason
    with pytest.raises(KekError, match="was not given"):
        KeyRing(STRANGER).unwrap(dump[0]["subject"], dump[0]["kek_id"], bytes(dump[0]["key"]))


async def test_rotation_rewraps_every_key_under_the_new_kek_and_keeps_it_readable(
    url: str,
) -> None:
    """More keys than one batch under the old KEK, one subject erased; the new KEK current and
    the old one previous: rotate-kek rewraps all (with progress), every key reads the same
    afterwards with the new KEK alone, the erased subject stays erased, and a second run has
    nothing to do."""
    subjects = [f"s{i:04d}" for i in range(REWRAP_BATCH * 2 + 50)]
    async with opened(url, KeyRing(OLD)) as store:
        before = await store.keys_for(subjects)
        await store.erase("s0007")
    progress: list[tuple[int, int]] = []
    async with opened(url, KeyRing(NEW, (OLD,))) as store:
        # the services restarted with the new KEK read the old keys already
        assert await store.keys(["s0001"]) == {"s0001": before["s0001"]}
        rewrapped = await store.rotate(lambda done, total: progress.append((done, total)))
        assert rewrapped == len(subjects) - 1
        status = await store.status()
        assert status.by_kek == {KeyRing(NEW).current_id: len(subjects) - 1}
        assert status.erased == 1 and status.unwrapped == 0
        assert await store.rotate() == 0  # idempotent
    assert progress[0] == (0, len(subjects) - 1) and progress[-1] == (rewrapped, rewrapped)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    async with opened(url, KeyRing(NEW)) as store:  # the old KEK is no longer needed
        after = await store.keys(subjects)
        assert after == {s: k for s, k in before.items() if s != "s0007"}
        with pytest.raises(SubjectErasedError):
            await store.key_for("s0007")
    async with opened(url, KeyRing(OLD)) as store:  # nor does it open anything now
        with pytest.raises(KekError) as refused:
            await store.keys(["s0001"])
        assert refused.value.code == "kek_unknown"


async def test_a_wrong_or_missing_kek_is_a_clear_error_and_nothing_is_created(url: str) -> None:
    """A store of keys under one KEK, opened with another: `kek_unknown`, naming both ids, and no
    key is created beside the others; without a KEK: `kek_missing`; counting needs no KEK."""
    async with opened(url, KeyRing(OLD)) as store:
        await store.keys_for(["ada", "bob"])
    async with opened(url, KeyRing(STRANGER)) as store:
        with pytest.raises(KekError) as wrong:
            await store.key_for("cyd")
        assert wrong.value.code == "kek_unknown"
        assert KeyRing(OLD).current_id in wrong.value.message
        assert KeyRing(STRANGER).current_id in wrong.value.message
    async with opened(url, None) as store:
        with pytest.raises(KekError) as missing:
            await store.keys(["ada"])
        assert missing.value.code == "kek_missing"
        status = await store.status()
        assert status.by_kek == {KeyRing(OLD).current_id: 2}
    assert [r["subject"] for r in await sql(url, "SELECT subject FROM subject_keys")] == [
        "ada",
        "bob",
    ]


@pytest.mark.parametrize("by", ["first open", "rotate-kek"])
async def test_keys_in_the_clear_from_before_wrapping_are_wrapped_in_place(
    url: str, by: str
) -> None:
    """A key table as written before wrapping (no kek_id column, keys in the clear): the first
    open with a KEK (a service's start), or `esctl keys rotate-kek`, adds the column and wraps
    every key in place; the keys read the same; the table holds no key in the clear afterwards;
    erased rows stay erased."""
    sqlite = url.startswith("sqlite")
    binary, time = ("BLOB", "TIMESTAMP") if sqlite else ("BYTEA", "TIMESTAMPTZ")
    await sql(
        url,
        f"CREATE TABLE subject_keys (subject VARCHAR(200) PRIMARY KEY, key {binary}, "
        f"created_at {time} NOT NULL, erased_at {time})",
    )
    at: Any = "2026-01-01 00:00:00" if sqlite else datetime(2026, 1, 1, tzinfo=UTC)
    clear = {f"old-{i}": new_key() for i in range(3)}
    for subject, key in clear.items():
        await sql(
            url,
            "INSERT INTO subject_keys (subject, key, created_at) VALUES (?, ?, ?)",
            subject,
            key,
            at,
        )
    await sql(
        url,
        "INSERT INTO subject_keys (subject, key, created_at, erased_at) VALUES (?, NULL, ?, ?)",
        "gone",
        at,
        at,
    )
    async with opened(url, None) as store:
        assert (await store.status()).unwrapped == 3
    async with opened(url, KeyRing(NEW)) as store:
        if by == "rotate-kek":
            assert await store.rotate() == 3
        assert await store.keys([*clear, "gone"]) == clear
        assert (await store.status()).by_kek == {KeyRing(NEW).current_id: 3}
    dump = await sql(url, "SELECT * FROM subject_keys")
    blob = b"".join(candidate_keys(dump))
    assert not any(key in blob for key in clear.values())
    assert {r["subject"]: r["kek_id"] for r in dump if r["key"] is not None} == {
        s: KeyRing(NEW).current_id for s in clear
    }
    if sqlite:  # secure_delete: nor in the file
        data = Path(url.split(":///", 1)[1]).read_bytes()  # noqa: ASYNC240
        assert not any(key in data for key in clear.values())


async def test_a_wrapped_key_copied_to_another_subject_does_not_open(url: str) -> None:
    """The subject is authenticated with the wrapped key: ada's stored key written into bob's
    row fails to unwrap, with a reason, instead of opening bob's fields with ada's key."""
    async with opened(url, KeyRing(OLD)) as store:
        await store.keys_for(["ada", "bob"])
    ada = (await sql(url, "SELECT key FROM subject_keys WHERE subject = ?", "ada"))[0]["key"]
    await sql(url, "UPDATE subject_keys SET key = ? WHERE subject = ?", bytes(ada), "bob")
    async with opened(url, KeyRing(OLD)) as store:
        with pytest.raises(KeyUnwrapError, match="copied from another subject"):
            await store.keys(["bob"])


class CountingRing(KeyRing):
    unwrapped = 0

    def unwrap(self, subject: str, kid: str, wrapped: bytes) -> bytes:
        self.unwrapped += 1
        return super().unwrap(subject, kid, wrapped)


async def test_unwrapping_is_cached_yet_an_erasure_by_another_process_counts_at_once(
    url: str,
) -> None:
    """A reader unwraps a key once and then answers from its cache, yet every read asks the
    database: when another store (another process) erases the key, the reader's next read has
    no key, and the cache forgets it."""
    ring = CountingRing(OLD)
    async with opened(url, ring) as reader, opened(url, KeyRing(OLD)) as eraser:
        ada = await eraser.key_for("ada")
        assert await reader.keys(["ada"]) == {"ada": ada}
        assert await reader.keys(["ada"]) == {"ada": ada}
        assert ring.unwrapped == 1
        await eraser.erase("ada")
        assert await reader.keys(["ada"]) == {}
        assert "ada" not in reader._cache
