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

Keys are stored wrapped by a key-encryption key (`shared.kek`): the table alone opens nothing.
A store written before wrapping existed (keys in the clear, no `kek_id` column) is migrated when
a process first opens it with a KEK: the column is added and every key wrapped, in one
transaction (PostgreSQL: then `VACUUM FULL`, so no dead row version keeps a key in the clear;
SQLite: `secure_delete` overwrites the old bytes). `esctl keys rotate-kek` does the same for keys
wrapped by a previous KEK.

Unwrapped keys are cached per process (an AES-GCM decryption per key and per read is cheap, but
a read of 500 subjects is 500 of them), and the cache never answers by itself: every read asks
the database, and a cached key is used only while the database still holds the very wrapped key
it came from. A key erased by any process is unusable in every process at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
from shared.kek import KekError, KeyRing, KeyUnwrapError
from shared.logging import get_logger
from shared.personal import KEY_BYTES, new_key

log = get_logger(__name__)

_md = sa.MetaData()
KEYS = sa.Table(
    "subject_keys",
    _md,
    sa.Column("subject", sa.String(200), primary_key=True),
    sa.Column("key", sa.LargeBinary(64)),  # wrapped (shared.kek); NULL once erased
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("erased_at", sa.DateTime(timezone=True)),
    # the KEK that wrapped `key` (NULL: erased, or a key in the clear from before wrapping)
    sa.Column("kek_id", sa.String(32)),
)
#: rows per transaction when keys are (re)wrapped
REWRAP_BATCH = 500


class SubjectErasedError(EsError):
    """The data subject was erased: its key is gone and no new one is created."""

    code = "subject_erased"

    def __init__(self, subject: str) -> None:
        super().__init__(
            f"data subject {subject!r} was erased; no personal data is accepted for it"
        )
        self.subject = subject


@dataclass
class KeyStatus:
    """What a key store holds, by key-encryption key (`esctl keys status`)."""

    where: str
    #: KEK id -> how many keys it wraps
    by_kek: dict[str, int] = field(default_factory=dict)
    #: keys in the clear (a store written before wrapping, not opened since)
    unwrapped: int = 0
    #: subjects erased (tombstones: no key)
    erased: int = 0

    @property
    def keys(self) -> int:
        return sum(self.by_kek.values()) + self.unwrapped


class KeyStore:
    """Per-subject keys in SQLite or PostgreSQL (see the module docstring for the guarantee),
    stored wrapped by `keyring`'s current KEK. `keyring=None` serves `status` only (a tool that
    counts keys needs no KEK); anything that reads or creates keys then fails with `kek_missing`."""

    def __init__(self, url: str, keyring: KeyRing | None, *, cache_size: int = 10_000) -> None:
        self.url = url
        self.keyring = keyring
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
        self._opened = False
        self._open_lock = asyncio.Lock()
        # subject -> (KEK id, wrapped key, data key), least recently used first
        self._cache: OrderedDict[str, tuple[str, bytes, bytes]] = OrderedDict()
        self._cache_size = cache_size

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
                        await conn.run_sync(_add_kek_column)
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

    def _ring(self) -> KeyRing:
        if self.keyring is None:
            raise KekError(
                f"the key store {self.where} cannot be opened without a key-encryption key "
                "(KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_FILE)",
                code="kek_missing",
            )
        return self.keyring

    async def open(self) -> None:
        """Ready the store for keys (done by the first read, or at a service's start): the
        table; keys still in the clear wrapped (the migration of a store from before wrapping);
        and a check that this process has the KEK of every stored key (KekError if not)."""
        if self._opened:
            return
        async with self._open_lock:
            if self._opened:
                return
            ring = self._ring()
            await self._schema()
            self._check_keks(await self.status(), ring)  # a wrong KEK wraps nothing
            wrapped = await self._rewrap(legacy_only=True)
            if wrapped:
                log.warning(
                    "subject_keys_wrapped",
                    keys=wrapped,
                    kek_id=ring.current_id,
                    key_store=self.where,
                    why="the store held keys in the clear (written before wrapping)",
                )
            self._opened = True

    def _check_keks(self, status: KeyStatus, ring: KeyRing) -> None:
        unknown = sorted(set(status.by_kek) - set(ring.ids))
        if unknown:
            counts = ", ".join(f"{status.by_kek[k]} under {k}" for k in unknown)
            raise KekError(
                f"the key store {self.where} holds keys wrapped by a key-encryption key this "
                f"process was not given ({counts}; it has {', '.join(ring.ids)}): a wrong "
                "KEY_ENCRYPTION_KEY? During a rotation give the old one as "
                "KEY_ENCRYPTION_KEY_PREVIOUS",
                code="kek_unknown",
            )

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
        ring = self._ring()
        insert = sqlite_insert if self.dialect == "sqlite" else pg_insert
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                for i in range(0, len(missing), 500):
                    rows = []
                    for s in missing[i : i + 500]:
                        key = new_key()
                        kid, wrapped = ring.wrap(s, key)
                        self._remember(s, kid, wrapped, key)  # used only if this row wins
                        rows.append(
                            {"subject": s, "key": wrapped, "kek_id": kid, "created_at": now}
                        )
                    # erased subjects keep their row: nothing is inserted for them
                    await conn.execute(
                        insert(KEYS).on_conflict_do_nothing(index_elements=["subject"]), rows
                    )
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        return found | await self.keys(missing)  # ours, or a concurrent creator's

    async def keys(self, subjects: Iterable[str]) -> dict[str, bytes]:
        """The keys of those subjects that have one (erased and unknown subjects are absent).
        Always read from the database; only the unwrapping is cached."""
        wanted = sorted(set(subjects))
        if not wanted:
            return {}
        await self.open()
        found: dict[str, bytes] = {}
        try:
            async with self._engine.connect() as conn:
                for i in range(0, len(wanted), 500):
                    rows = await conn.execute(
                        sa.select(KEYS.c.subject, KEYS.c.key, KEYS.c.kek_id).where(
                            KEYS.c.subject.in_(wanted[i : i + 500]), KEYS.c.key.is_not(None)
                        )
                    )
                    for r in rows:
                        found[r.subject] = self._unwrap(r.subject, r.kek_id, bytes(r.key))
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        for gone in set(wanted) - set(found):  # erased meanwhile, maybe by another process
            self._cache.pop(gone, None)
        return found

    def _unwrap(self, subject: str, kid: str | None, wrapped: bytes) -> bytes:
        hit = self._cache.get(subject)
        if hit is not None and hit[0] == kid and hit[1] == wrapped:
            self._cache.move_to_end(subject)
            return hit[2]
        if kid is None:
            raise KekError(
                f"the key store {self.where} holds the key of {subject!r} in the clear, written "
                "after this process wrapped the others (by an older version still running?): "
                "stop it, then run `esctl keys rotate-kek` to wrap it",
                code="key_not_wrapped",
            )
        key = self._ring().unwrap(subject, kid, wrapped)
        self._remember(subject, kid, wrapped, key)
        return key

    def _remember(self, subject: str, kid: str, wrapped: bytes, key: bytes) -> None:
        self._cache[subject] = (kid, wrapped, key)
        self._cache.move_to_end(subject)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def status(self) -> KeyStatus:
        """How many keys, under which KEK; how many erased. Needs no KEK."""
        await self._schema()
        status = KeyStatus(self.where)
        try:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(
                        KEYS.c.kek_id, KEYS.c.key.is_(None).label("erased"), sa.func.count()
                    ).group_by(KEYS.c.kek_id, KEYS.c.key.is_(None))
                )
                for kid, erased, count in rows:
                    if erased:
                        status.erased += count
                    elif kid is None:
                        status.unwrapped += count
                    else:
                        status.by_kek[kid] = status.by_kek.get(kid, 0) + count
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        return status

    async def rotate(self, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Rewrap every key not under the current KEK (previous KEKs, or in the clear) with the
        current one, REWRAP_BATCH keys per transaction; the number rewrapped now. Safe to run
        again, or beside the running services: a key erased meanwhile is left erased."""
        await self._schema()
        self._check_keks(await self.status(), self._ring())  # before anything is rewritten
        rewrapped = await self._rewrap(legacy_only=False, on_progress=on_progress)
        await self.open()  # every key is now under a KEK this process has
        return rewrapped

    async def _rewrap(
        self, *, legacy_only: bool, on_progress: Callable[[int, int], None] | None = None
    ) -> int:
        ring = self._ring()
        stale = (
            KEYS.c.kek_id.is_(None)
            if legacy_only
            else sa.or_(KEYS.c.kek_id.is_(None), KEYS.c.kek_id != ring.current_id)
        )
        todo = sa.and_(KEYS.c.key.is_not(None), stale)
        done, after = 0, ""
        try:
            async with self._engine.connect() as conn:
                total = (
                    await conn.execute(sa.select(sa.func.count()).select_from(KEYS).where(todo))
                ).scalar_one()
            if not total:
                return 0
            if on_progress is not None:
                on_progress(0, total)
            while True:
                batch, after = await self._rewrap_batch(ring, todo, after)
                if batch is None:
                    break
                done += batch
                if on_progress is not None:
                    on_progress(done, total)
            if done and self.dialect == "postgresql":
                await self._vacuum()  # no dead row version keeps the old (or clear) key
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        return done

    async def _rewrap_batch(
        self, ring: KeyRing, todo: sa.ColumnElement[bool], after: str
    ) -> tuple[int | None, str]:
        """Rewrap the next batch after subject `after`: (keys rewrapped or None when there is
        no batch left, the last subject of the batch)."""
        for attempt in range(1, 21):
            try:
                async with self._engine.begin() as conn:
                    rows = (
                        await conn.execute(
                            sa.select(KEYS.c.subject, KEYS.c.key, KEYS.c.kek_id)
                            .where(todo, KEYS.c.subject > after)
                            .order_by(KEYS.c.subject)
                            .limit(REWRAP_BATCH)
                        )
                    ).all()
                    if not rows:
                        return None, after
                    count = 0
                    for r in rows:
                        old = bytes(r.key)
                        kid, wrapped = ring.wrap(r.subject, self._plain(r.subject, r.kek_id, old))
                        result = await conn.execute(
                            sa.update(KEYS)
                            # the very key read: one erased (NULL) or rewrapped meanwhile stays so
                            .where(KEYS.c.subject == r.subject, KEYS.c.key == old)
                            .values(key=wrapped, kek_id=kid)
                        )
                        count += result.rowcount
                    return count, rows[-1].subject
            except OperationalError as exc:
                # SQLite: two processes migrating at once, both read then write; the one that
                # would deadlock is refused at once ("database is locked") and tries again
                if "locked" not in str(exc) or attempt == 20:
                    raise
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _plain(self, subject: str, kid: str | None, stored: bytes) -> bytes:
        """The data key of a stored row: unwrapped, or as it is when it is in the clear."""
        if kid is not None:
            return self._ring().unwrap(subject, kid, stored)
        if len(stored) != KEY_BYTES:
            raise KeyUnwrapError(f"the stored key of {subject!r} is neither wrapped nor a key")
        return stored

    async def _vacuum(self) -> None:
        # the old row versions live on as dead tuples until the table is rewritten; VACUUM
        # cannot run inside a transaction
        async with self._engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(sa.text(f"VACUUM FULL {KEYS.name}"))

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
        self._cache.pop(subject, None)
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.update(KEYS)
                    .where(KEYS.c.subject == subject, KEYS.c.key.is_not(None))
                    .values(key=None, kek_id=None, erased_at=now)
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
                await self._vacuum()
        except (OperationalError, OSError) as exc:
            raise InfrastructureUnavailable(f"key store {self.where}: {exc}") from exc
        log.info("subject_key_erased", subject=subject, key_deleted=deleted)
        return deleted

    async def close(self) -> None:
        self._cache.clear()
        await self._engine.dispose()


def _add_kek_column(sync_conn: Any) -> None:
    """A table made before keys were wrapped gets its `kek_id` column (NULL: in the clear)."""
    columns = {c["name"] for c in sa.inspect(sync_conn).get_columns(KEYS.name)}
    if "kek_id" not in columns:
        sync_conn.execute(sa.text(f"ALTER TABLE {KEYS.name} ADD COLUMN kek_id VARCHAR(32)"))


class InMemoryKeyStore:
    """The same contract in memory (unit tests, one-process tools); nothing survives it."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes | None] = {}
        self._erased: dict[str, datetime] = {}
        self.dialect = "memory"
        self.where = "memory"

    async def open(self) -> None:
        return None

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


__all__ = ["InMemoryKeyStore", "KeyStatus", "KeyStore", "SubjectErasedError"]
