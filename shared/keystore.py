"""The key store: one AES-256 key per data subject, and the final deletion of that key.

A database, not a topic: deleting a row is final when the transaction commits, where a compacted
topic keeps a deleted key until the log cleaner has rewritten its segment (a bound made of
`segment.ms`, `max.compaction.lag.ms` and the cleaner's backlog, on every replica), and a key
topic would have to be read in full by every service that opens a sealed value.

The guarantee, per backend (README, "Erasure"):

* SQLite (`sqlite:///path`, the default): `PRAGMA secure_delete=ON` on every connection makes
  SQLite overwrite the deleted key's bytes with zeros in the database file, and the rollback
  journal (never WAL here) that held the old page is deleted at commit: once `erase` returns, the
  key is in no file of the key store.
* PostgreSQL: the key is set to NULL and `VACUUM FULL` rewrites the table into a new file, so
  no dead row version keeps it; the write-ahead log that recorded the key's creation keeps it
  until its segment is recycled and overwritten (after checkpoints: minutes with the defaults),
  and base backups or WAL archives keep it as long as they are kept. Keep their retention
  within the erasure bound you promise.

An erased subject keeps a row without a key (a tombstone with `erased_at`): a new key is never
created for it, so data arriving after the erasure is refused instead of silently sealed anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db import async_url
from shared.errors import EsError, InfrastructureUnavailable
from shared.logging import get_logger
from shared.personal import new_key

log = get_logger(__name__)

_md = sa.MetaData()
KEYS = sa.Table(
    "subject_keys",
    _md,
    sa.Column("subject", sa.String(200), primary_key=True),
    sa.Column("key", sa.LargeBinary(64)),  # NULL once erased
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("erased_at", sa.DateTime(timezone=True)),
)


class SubjectErasedError(EsError):
    """The data subject was erased: its key is gone and no new one is created."""

    code = "subject_erased"

    def __init__(self, subject: str) -> None:
        super().__init__(
            f"data subject {subject!r} was erased; no personal data is accepted for it"
        )
        self.subject = subject


class KeyStore:
    """Per-subject keys in SQLite or PostgreSQL (see the module docstring for the guarantee)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self._engine: AsyncEngine = create_async_engine(
            async_url(url, "KEY_STORE_URL"),
            **({"connect_args": {"timeout": 30}} if self.dialect == "sqlite" else {}),
        )
        if self.dialect == "sqlite":
            path = url.split(":///", 1)[1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)

            @sa_event.listens_for(self._engine.sync_engine, "connect")
            def on_connect(dbapi_connection: Any, _: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA secure_delete=ON")
                cursor.execute("PRAGMA journal_mode=DELETE")
                cursor.close()

        self._ready = False
        self._schema_lock = asyncio.Lock()

    async def _schema(self) -> None:
        if self._ready:
            return
        async with self._schema_lock:
            for attempt in (1, 2):
                try:
                    async with self._engine.begin() as conn:
                        if self.dialect == "postgresql":  # one creator at a time (see store.py)
                            await conn.execute(
                                sa.text("SELECT pg_advisory_xact_lock(hashtext('esctl.keys'))")
                            )
                        await conn.run_sync(_md.create_all)
                    break
                except DBAPIError as exc:
                    # another process created the table between the check and the CREATE
                    if attempt == 2 or "already exists" not in str(exc):
                        raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
                except OSError as exc:
                    raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
            self._ready = True

    @property
    def where(self) -> str:
        """The store's location for messages and reports: never its credentials."""
        return self.url.split("@")[-1]

    async def key_for(self, subject: str) -> bytes:
        """The subject's key, created on first use; SubjectErasedError once it was erased."""
        key = (await self.keys_for([subject])).get(subject)
        if key is None:
            raise SubjectErasedError(subject)
        return key

    async def keys_for(self, subjects: Iterable[str]) -> dict[str, bytes]:
        """The keys of many subjects, those missing created in one transaction (a batch of
        registrations); erased subjects are absent from the answer."""
        wanted = set(subjects)
        found = await self.keys(wanted)
        missing = sorted(wanted - set(found))
        if not missing:
            return found
        insert = sqlite_insert if self.dialect == "sqlite" else pg_insert
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                for i in range(0, len(missing), 500):
                    # erased subjects keep their row: nothing is inserted for them
                    await conn.execute(
                        insert(KEYS).on_conflict_do_nothing(index_elements=["subject"]),
                        [
                            {"subject": s, "key": new_key(), "created_at": now}
                            for s in missing[i : i + 500]
                        ],
                    )
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        return found | await self.keys(missing)  # ours, or a concurrent creator's

    async def keys(self, subjects: Iterable[str]) -> dict[str, bytes]:
        """The keys of those subjects that have one (erased and unknown subjects are absent)."""
        wanted = sorted(set(subjects))
        if not wanted:
            return {}
        await self._schema()
        found: dict[str, bytes] = {}
        try:
            async with self._engine.connect() as conn:
                for i in range(0, len(wanted), 500):
                    rows = await conn.execute(
                        sa.select(KEYS.c.subject, KEYS.c.key).where(
                            KEYS.c.subject.in_(wanted[i : i + 500]), KEYS.c.key.is_not(None)
                        )
                    )
                    found.update({r.subject: bytes(r.key) for r in rows})
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        return found

    async def erased_at(self, subject: str) -> datetime | None:
        await self._schema()
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(sa.select(KEYS.c.erased_at).where(KEYS.c.subject == subject))
            ).scalar_one_or_none()
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value if isinstance(value, datetime) else None

    async def erase(self, subject: str) -> bool:
        """Delete the subject's key for good and leave a tombstone. True if a key was deleted
        now (False: erased before, or never had a key; the tombstone is there either way)."""
        await self._schema()
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.update(KEYS)
                    .where(KEYS.c.subject == subject, KEYS.c.key.is_not(None))
                    .values(key=None, erased_at=now)
                )
                deleted = bool(result.rowcount)
                if not deleted:
                    exists = (
                        await conn.execute(
                            sa.select(KEYS.c.subject).where(KEYS.c.subject == subject)
                        )
                    ).first()
                    if exists is None:
                        await conn.execute(
                            sa.insert(KEYS).values(
                                subject=subject, key=None, created_at=now, erased_at=now
                            )
                        )
            if deleted and self.dialect == "postgresql":
                # the old row version (with the key) lives on as a dead tuple until the table
                # is rewritten; VACUUM cannot run inside a transaction
                async with self._engine.connect() as conn:
                    auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await auto.execute(sa.text(f"VACUUM FULL {KEYS.name}"))
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        log.info("subject_key_erased", subject=subject, key_deleted=deleted)
        return deleted

    async def close(self) -> None:
        await self._engine.dispose()


class InMemoryKeyStore:
    """The same contract in memory (unit tests, one-process tools); nothing survives it."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes | None] = {}
        self._erased: dict[str, datetime] = {}
        self.dialect = "memory"
        self.where = "memory"

    async def key_for(self, subject: str) -> bytes:
        key = (await self.keys_for([subject])).get(subject)
        if key is None:
            raise SubjectErasedError(subject)
        return key

    async def keys_for(self, subjects: Iterable[str]) -> dict[str, bytes]:
        for s in set(subjects) - set(self._erased):
            self._keys.setdefault(s, new_key())
        return await self.keys(subjects)

    async def keys(self, subjects: Iterable[str]) -> dict[str, bytes]:
        return {s: k for s in set(subjects) if (k := self._keys.get(s)) is not None}

    async def erased_at(self, subject: str) -> datetime | None:
        return self._erased.get(subject)

    async def erase(self, subject: str) -> bool:
        deleted = self._keys.pop(subject, None) is not None
        self._erased.setdefault(subject, datetime.now(UTC))
        return deleted

    async def close(self) -> None:
        return None


__all__ = ["InMemoryKeyStore", "KeyStore", "SubjectErasedError"]
