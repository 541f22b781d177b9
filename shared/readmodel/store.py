"""The read store on SQLite (default, embedded) or PostgreSQL: one implementation, SQLAlchemy Core.

Tables come in *generations* (`posts_g1`, `events_g1`, ...). `read_model_meta.active_generation`
says which one queries read and the live projector writes. A rebuild fills generation N+1 beside
the live one and flips the pointer in one transaction: readers never see a half-built model.

Exactly-once effect: each batch's rows and the partition's next offset are written in ONE
transaction, and only if the stored offset is the one the batch starts from (compare-and-set).
A projector that restarts seeks to the stored offsets; a zombie projector whose partition moved
finds the offset changed under it and writes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db import async_url
from shared.errors import ConfigurationError, InfrastructureUnavailable
from shared.messages.blog import AuthorRegistered, PostCreated
from shared.readmodel.pipeline import IndexedEvent, upcast_row
from shared.readmodel.views import View, fold_batch, is_author_event, is_post_event

SCHEMA_VERSION = 3  # 2: authors_g*.erased_at (erasure); 3: events_g*.actor (audit trail)
T = TypeVar("T")
_meta = sa.MetaData()
META = sa.Table(
    "read_model_meta",
    _meta,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
TS = sa.DateTime(timezone=True)


@dataclass(frozen=True)
class GenerationTables:
    generation: int
    metadata: sa.MetaData
    posts: sa.Table
    post_tags: sa.Table
    authors: sa.Table
    events: sa.Table
    positions: sa.Table


@functools.lru_cache(maxsize=16)
def generation_tables(gen: int) -> GenerationTables:
    # Cached: the definitions never change, and building them anew on every batch and query
    # cost the projector 18 % and the query service ~30 % of their CPU (py-spy, end-to-end
    # benchmark) in Column construction and statement compilation that missed SQLAlchemy's
    # compiled cache.
    md = sa.MetaData()
    posts = sa.Table(
        f"posts_g{gen}",
        md,
        sa.Column("post_id", sa.String(200), primary_key=True),
        sa.Column("author_id", sa.String(200), nullable=False, index=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("published_at", TS),
        sa.Column("last_rejection", sa.Text),
    )
    sa.Index(f"ix_posts_g{gen}_created", posts.c.created_at, posts.c.post_id)
    post_tags = sa.Table(
        f"post_tags_g{gen}",
        md,
        sa.Column("post_id", sa.String(200), primary_key=True),
        sa.Column("tag", sa.String(100), primary_key=True, index=True),
    )
    authors = sa.Table(
        f"authors_g{gen}",
        md,
        sa.Column("author_id", sa.String(200), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("registered_at", TS, nullable=False),
        sa.Column("erased_at", TS),  # schema 2
    )
    events = sa.Table(
        f"events_g{gen}",
        md,
        sa.Column("log_partition", sa.Integer, primary_key=True),
        sa.Column("log_offset", sa.BigInteger, primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("aggregate_id", sa.String(200), nullable=False),
        sa.Column("aggregate_version", sa.Integer, nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("command_id", sa.String(36)),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("actor", sa.String(200)),  # schema 3: who asked for the event (audit trail)
        # A second application of any event violates this: double application cannot hide.
        sa.UniqueConstraint("aggregate_id", "aggregate_version", name=f"uq_events_g{gen}_stream"),
    )
    positions = sa.Table(
        f"positions_g{gen}",
        md,
        sa.Column("log_partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("applied_at", TS, nullable=False),
        sa.Column("last_event_at", TS),
    )
    return GenerationTables(gen, md, posts, post_tags, authors, events, positions)


def _authors_erased_at(conn: Connection) -> None:
    """Schema 2: every generation's authors table gets `erased_at`."""
    for name in sa.inspect(conn).get_table_names():
        if name.startswith("authors_g") and name.removeprefix("authors_g").isdigit():
            kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "TIMESTAMP"
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN erased_at {kind}"))


def _events_actor(conn: Connection) -> None:
    """Schema 3: every generation's events table gets `actor` (null for the events stored
    before: their records named none, or it was not kept; a rebuild reads it from the log)."""
    inspector = sa.inspect(conn)
    for name in inspector.get_table_names():
        is_events = name.startswith("events_g") and name.removeprefix("events_g").isdigit()
        if is_events and "actor" not in {c["name"] for c in inspector.get_columns(name)}:
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN actor VARCHAR(200)"))


#: schema version -> the migration that reaches it from the version before
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _authors_erased_at, 3: _events_actor}


@dataclass(frozen=True)
class PartitionBatch:
    """Consecutive records of one partition: their events, where they start and end."""

    partition: int
    events: Sequence[IndexedEvent]
    start_offset: int
    next_offset: int


class ReadStoreUnavailable(InfrastructureUnavailable):
    """The read store's database does not answer: refused or dropped connections, a server
    shutting down or starting up, a connect, pool or statement timeout. Retrying later can
    succeed; nothing is known to have been written (a commit may have been, which the caller
    learns by reading again: the projector re-reads its stored positions)."""

    code = "read_store_unavailable"


#: what the database's absence looks like, at any depth of an error's chain (SQLAlchemy wraps
#: the driver's errors, and some connect errors reach us unwrapped)
_GONE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # the connect or command timeout (asyncio's is this one)
    sa.exc.TimeoutError,  # no pooled connection within the pool timeout
    asyncpg.exceptions.PostgresConnectionError,  # connection lost, cannot connect
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, terminated
)


def _gone_because(exc: BaseException) -> BaseException | None:
    """The error of `exc`'s chain that says the database is not there (None: `exc` is a fault
    of the query, or of something else)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _GONE):
            return e
        if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
            return e
        if isinstance(e, asyncpg.exceptions.InterfaceError) and "closed" in str(e):
            return e  # "cannot perform operation: connection is closed"
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return None


def _unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is not there (as opposed to a fault of the query)."""
    return _gone_because(exc) is not None


def _describe(exc: BaseException) -> str:
    """One line for an on-call engineer: the error that says why, its type and first line."""
    reason = _gone_because(exc) or exc
    if isinstance(reason, sa.exc.DBAPIError) and reason.orig is not None:
        reason = reason.orig
    text = str(reason).splitlines()[0] if str(reason) else ""
    if isinstance(reason, TimeoutError) and not text:
        text = "no answer within the timeout"
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


class StaleBatch(Exception):
    """The batch does not start at the stored position, or the generation is no longer active:
    the caller must re-read positions and seek. Nothing was written."""


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class JsonText(str):
    """A JSON column's value already serialized (pydantic's `model_dump_json`): written as is."""

    __slots__ = ()


class _Bulk:
    """A batch's rows of one table in ONE statement, not one per row: the projector's hot path.

    On SQLite one `executemany` of the driver per statement shape (the rows as tuples, converted
    by the column types' own SQLAlchemy bind processors, so the stored text is what SQLAlchemy
    writes and reads back); on PostgreSQL one `INSERT ... SELECT FROM unnest($1, $2, ...)` with
    one array per column (one round trip, one plan, and the server inserts the rows in one
    executor run instead of one Bind/Execute per row). Both run inside the caller's transaction.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self.postgresql = dialect.name == "postgresql"
        self._sql: dict[tuple[str, bool], str] = {}
        self._convert: dict[str, list[tuple[int, Callable[[Any], Any]]]] = {}

    def _statement(self, table: sa.Table, upsert: bool) -> str:
        key = (table.name, upsert)
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = self._render(table, upsert)
        return sql

    def _render(self, table: sa.Table, upsert: bool) -> str:
        names = [c.name for c in table.columns]
        columns = ", ".join(names)
        if self.postgresql:
            arrays = ", ".join(
                f"${n}::{self._array_type(c)}[]" for n, c in enumerate(table.columns, 1)
            )
            values = ", ".join(
                f"u.{c.name}::json" if isinstance(c.type, sa.JSON) else f"u.{c.name}"
                for c in table.columns
            )
            sql = (
                f"INSERT INTO {table.name} ({columns}) SELECT {values} "  # noqa: S608  # names from our own Table definitions
                f"FROM unnest({arrays}) AS u({columns})"
            )
        else:
            marks = ", ".join("?" for _ in names)
            sql = f"INSERT INTO {table.name} ({columns}) VALUES ({marks})"  # noqa: S608  # names from our own Table definitions
        if upsert:
            keys = [c.name for c in table.primary_key.columns]
            updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
            sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        return sql

    @staticmethod
    def _array_type(column: sa.Column[Any]) -> str:
        kind = column.type
        if isinstance(kind, sa.BigInteger):
            return "int8"
        if isinstance(kind, sa.Integer):
            return "int4"
        if isinstance(kind, sa.DateTime):
            return "timestamptz" if kind.timezone else "timestamp"
        return "text"  # String, Text, and JSON (sent as its text, cast to json in the SELECT)

    def _converters(self, table: sa.Table) -> list[tuple[int, Callable[[Any], Any]]]:
        """(position, function) of the columns whose values the driver cannot take as they are."""
        found = self._convert.get(table.name)
        if found is None:
            found = []
            for i, c in enumerate(table.columns):
                if isinstance(c.type, sa.JSON):
                    found.append((i, _json_text))
                elif not self.postgresql:  # asyncpg takes str, int and datetime as they are
                    convert = c.type.dialect_impl(self.dialect).bind_processor(self.dialect)
                    if convert is not None:
                        found.append((i, convert))
            self._convert[table.name] = found
        return found

    def stamp(self, value: datetime | None) -> Any:
        """A timestamp as the driver takes it (SQLite: SQLAlchemy's text form)."""
        if value is None or self.postgresql:
            return value
        return self._stamp(value)

    @functools.cached_property
    def _stamp(self) -> Callable[[datetime], str]:
        convert = sa.DateTime(timezone=True).dialect_impl(self.dialect).bind_processor(self.dialect)
        assert convert is not None
        return convert

    def write(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, upsert: bool
    ) -> None:
        """INSERT `rows` (every column of `table`), or with `upsert` replace those whose key
        exists. A row may appear once per statement."""
        if not rows:
            return
        values = operator.itemgetter(*(c.name for c in table.columns))
        converters = self._converters(table)
        tuples = []
        for row in rows:
            out = list(values(row))
            for i, convert in converters:
                if out[i] is not None:
                    out[i] = convert(out[i])
            tuples.append(tuple(out))
        self.write_tuples(conn, table, tuples, upsert=upsert)

    def write_tuples(
        self, conn: Connection, table: sa.Table, rows: Sequence[tuple[Any, ...]], *, upsert: bool
    ) -> None:
        """`write` of rows already in column order, converted (`stamp`, JSON as text)."""
        if not rows:
            return
        sql = self._statement(table, upsert)
        if self.postgresql:
            conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*rows, strict=True)))
        else:
            _sqlite_cursor(conn).executemany(sql, rows)

    def delete(self, conn: Connection, column: sa.Column[Any], keys: Sequence[str]) -> None:
        """DELETE the rows whose `column` is one of `keys`."""
        if not keys:
            return
        table = column.table.name
        if self.postgresql:
            conn.exec_driver_sql(
                f"DELETE FROM {table} WHERE {column.name} = ANY($1::text[])",  # noqa: S608  # our names
                (list(keys),),
            )
        else:
            _sqlite_cursor(conn).executemany(
                f"DELETE FROM {table} WHERE {column.name} = ?",  # noqa: S608  # our names
                [(k,) for k in keys],
            )


def _json_text(value: Any) -> str:
    return value if isinstance(value, JsonText) else json.dumps(value)


def _sqlite_cursor(conn: Connection) -> Any:
    """The sqlite3 cursor of `conn`, inside SQLAlchemy's transaction (BEGIN IMMEDIATE)."""
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


class ReadStore:
    """SQLite or PostgreSQL read store. `writer=True` for the projector and rebuilds.

    Every operation is one synchronous SQLAlchemy function run in ONE hop: on SQLite in a worker
    thread with the standard sqlite3 driver, on PostgreSQL through asyncpg via `run_sync`. (With
    an async driver per statement, each of a batch's ~10 statements was its own thread hop, which
    measured as the end-to-end bottleneck; see bench/RESULTS.md.)
    """

    def __init__(
        self,
        url: str,
        *,
        writer: bool = False,
        relaxed_durability: bool = False,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float | None = None,
    ) -> None:
        """`relaxed_durability` (the projector): on PostgreSQL the session commits with
        `synchronous_commit=off`, so a commit does not wait for its WAL flush; a crash of the
        server may lose the last commits, rows and positions together, which the projector
        then applies again from Kafka (README, "Read side"). SQLite always runs WAL with
        `synchronous=NORMAL`.

        On PostgreSQL no operation waits unbounded for a database that is gone: a connect gives
        up after `connect_timeout_s`, so does the wait for a pooled connection, and a statement
        after `command_timeout_s` (None: no limit; the services set one). Every such failure,
        and a refused or dropped connection, raises `ReadStoreUnavailable`."""
        self.url = url
        self.where = url
        self._sync: sa.Engine | None = None
        self._async: AsyncEngine | None = None
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._sync = sa.create_engine(
                f"sqlite:///{path}", connect_args={"check_same_thread": False}
            )
            self._configure_sqlite(self._sync, writer)
            self.dialect = "sqlite"
            self._bulk = _Bulk(self._sync.dialect)
        else:
            server_settings = {"synchronous_commit": "off"} if relaxed_durability else {}
            driver_url = async_url(url, "READ_STORE_URL")
            parsed = sa.engine.make_url(driver_url)
            self.where = f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"
            self._async = create_async_engine(
                driver_url,
                pool_pre_ping=True,
                pool_timeout=connect_timeout_s,
                connect_args={
                    "server_settings": server_settings,
                    "timeout": connect_timeout_s,  # asyncpg's connect timeout (default 60 s)
                    "command_timeout": command_timeout_s,
                },
            )
            self.dialect = self._async.dialect.name
            self._bulk = _Bulk(self._async.dialect)
        self._active_cache: tuple[int, float] | None = None

    @staticmethod
    def _configure_sqlite(engine: sa.Engine, writer: bool) -> None:
        @sa_event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, _: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin (see below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @sa_event.listens_for(engine, "begin")
        def on_begin(conn: Any) -> None:
            # Writers take the write lock at BEGIN: a transaction that first reads (positions,
            # active generation) and then writes can never fail to upgrade its lock midway.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    async def _run(self, fn: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run `fn(connection)` in one transaction (committed if `write`)."""
        if self._sync is not None:
            engine = self._sync

            def work() -> T:
                if write:
                    with engine.begin() as conn:
                        return fn(conn)
                with engine.connect() as conn:
                    return fn(conn)

            return await asyncio.to_thread(work)
        assert self._async is not None
        try:
            if write:
                async with self._async.begin() as aconn:
                    return await aconn.run_sync(fn)
            async with self._async.connect() as aconn:
                return await aconn.run_sync(fn)
        except (StaleBatch, ConfigurationError):
            raise
        except Exception as exc:
            if not _unavailable(exc):
                raise
            raise ReadStoreUnavailable(
                f"the read store at {self.where} does not answer ({_describe(exc)})"
            ) from exc

    def _insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table) if self.dialect == "sqlite" else postgresql.insert(table)

    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        stmt = self._insert(table)
        keys = [c.name for c in table.primary_key.columns]
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_=updates)
        for chunk in _chunks(rows):
            conn.execute(stmt, list(chunk))

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply pending schema migrations (idempotent). Returns the active generation."""

        def body(conn: Connection) -> int:
            if self.dialect == "postgresql":
                # the projector and the query service both migrate at start: concurrent
                # CREATE TABLEs of one new table collide in PostgreSQL's catalog (seen in the
                # container tier), so migrations take turns
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('esctl.read_store'))"))
            _meta.create_all(conn)
            version = self._meta_value(conn, "schema_version")
            if version is None:
                generation_tables(1).metadata.create_all(conn)
                self._upsert(
                    conn,
                    META,
                    [
                        {"key": "active_generation", "value": "1"},
                        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                    ],
                )
            elif int(version) > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"read store schema {version} is newer than this code ({SCHEMA_VERSION})"
                )
            else:
                for v in range(int(version) + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[v](conn)
                self._upsert(conn, META, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
            return int(self._meta_value(conn, "active_generation") or 1)

        return await self._run(body, write=True)

    def _meta_value(self, conn: Connection, key: str, *, lock: bool = False) -> str | None:
        query = sa.select(META.c.value).where(META.c.key == key)
        if lock and self.dialect == "postgresql":
            query = query.with_for_update(read=True)
        value: str | None = conn.execute(query).scalar_one_or_none()
        return value

    async def active_generation(self) -> int:
        return await self._run(lambda c: int(self._meta_value(c, "active_generation") or 1))

    async def create_generation(self, gen: int) -> None:
        await self._run(generation_tables(gen).metadata.create_all, write=True)

    async def drop_generation(self, gen: int) -> None:
        await self._run(generation_tables(gen).metadata.drop_all, write=True)

    async def meta(self, key: str) -> str | None:
        return await self._run(lambda c: self._meta_value(c, key))

    async def set_meta(self, key: str, value: str | None) -> None:
        def body(conn: Connection) -> None:
            if value is None:
                conn.execute(sa.delete(META).where(META.c.key == key))
            else:
                self._upsert(conn, META, [{"key": key, "value": value}])

        await self._run(body, write=True)

    async def swap_generation(self, new: int) -> int:
        """Make `new` the active generation atomically; returns the previous one."""

        def body(conn: Connection) -> int:
            old = int(self._meta_value(conn, "active_generation", lock=True) or 1)
            self._upsert(conn, META, [{"key": "active_generation", "value": str(new)}])
            return old

        return await self._run(body, write=True)

    # -- writing -----------------------------------------------------------------------------

    async def positions(self, gen: int) -> dict[int, int]:
        t = generation_tables(gen).positions

        def body(conn: Connection) -> dict[int, int]:
            rows = conn.execute(sa.select(t.c.log_partition, t.c.next_offset))
            return {int(p): int(o) for p, o in rows}

        return await self._run(body)

    async def apply_batch(
        self,
        gen: int,
        partition: int,
        events: Sequence[IndexedEvent],
        *,
        start_offset: int,
        next_offset: int,
        require_active: bool = True,
        now: datetime | None = None,
    ) -> None:
        """Apply `events` of `partition` and store `next_offset`, in one transaction.

        Raises StaleBatch (writing nothing) unless the stored position is `start_offset` and,
        with `require_active`, `gen` is still the active generation.
        """
        await self.apply_batches(
            gen,
            [PartitionBatch(partition, events, start_offset, next_offset)],
            require_active=require_active,
            now=now,
        )

    async def apply_batches(
        self,
        gen: int,
        batches: Sequence[PartitionBatch],
        *,
        require_active: bool = True,
        now: datetime | None = None,
    ) -> None:
        """Apply batches of several partitions in ONE transaction (one commit, one lock), each
        guarded by its own compare-and-set; StaleBatch if any guard fails (nothing written)."""
        t = generation_tables(gen)
        applied_at = now or datetime.now(UTC)

        def body(conn: Connection) -> None:
            if require_active:
                active = int(self._meta_value(conn, "active_generation", lock=True) or 1)
                if active != gen:
                    raise StaleBatch(f"generation {gen} is no longer active ({active} is)")
            query = sa.select(t.positions.c.log_partition, t.positions.c.next_offset).where(
                t.positions.c.log_partition.in_([b.partition for b in batches])
            )
            if self.dialect == "postgresql":
                query = query.with_for_update()
            stored = {int(p): int(o) for p, o in conn.execute(query).all()}
            for b in batches:
                if stored.get(b.partition, 0) != b.start_offset:
                    raise StaleBatch(
                        f"partition {b.partition} is at "
                        f"{stored.get(b.partition, 0)}, batch starts at "
                        f"{b.start_offset}"
                    )
            self._write(conn, t, [e for b in batches for e in b.events])
            self._upsert(
                conn,
                t.positions,
                [
                    {
                        "log_partition": b.partition,
                        "next_offset": b.next_offset,
                        "applied_at": applied_at,
                        "last_event_at": max(
                            (e.envelope.occurred_at for e in b.events), default=None
                        ),
                    }
                    for b in batches
                ],
            )

        await self._run(body, write=True)

    @staticmethod
    def _load(
        conn: Connection, table: sa.Table, key: sa.Column[Any], ids: set[str]
    ) -> dict[str, View]:
        found: dict[str, View] = {}
        for chunk in _chunks(sorted(ids)):
            for row in conn.execute(sa.select(table).where(key.in_(chunk))).mappings():
                view = dict(row)
                for name, value in view.items():
                    if isinstance(value, datetime):
                        view[name] = _utc(value)
                found[view[key.name]] = view
        return found

    def _write(self, conn: Connection, t: GenerationTables, events: Sequence[IndexedEvent]) -> None:
        """The batch's effect on the tables, one statement per table and shape (`_Bulk`).

        Only the rows of aggregates that a batch continues are loaded: one that the batch creates
        (its first event here is PostCreated or AuthorRegistered) folds from nothing whatever is
        stored (those events ignore the view before them), so loading it would change nothing."""
        post_ids: dict[str, bool] = {}  # aggregate id -> whether its first event here creates it
        author_ids: dict[str, bool] = {}
        for e in events:
            if is_post_event(e.payload):
                post_ids.setdefault(e.envelope.aggregate_id, isinstance(e.payload, PostCreated))
            elif is_author_event(e.payload):
                author_ids.setdefault(
                    e.envelope.aggregate_id, isinstance(e.payload, AuthorRegistered)
                )
        continued = {i for i, created in post_ids.items() if not created}
        posts = self._load(conn, t.posts, t.posts.c.post_id, continued)
        continued = {i for i, created in author_ids.items() if not created}
        authors = self._load(conn, t.authors, t.authors.c.author_id, continued)
        posts, authors = fold_batch(posts, authors, events)
        bulk = self._bulk
        bulk.write(conn, t.posts, [posts[i] for i in post_ids], upsert=True)
        bulk.write(conn, t.authors, [authors[i] for i in author_ids], upsert=True)
        if post_ids:
            bulk.delete(conn, t.post_tags.c.post_id, list(post_ids))
            tags = [(i, tag) for i in post_ids for tag in posts[i]["tags"]]  # post_id, tag
            bulk.write_tuples(conn, t.post_tags, tags, upsert=False)
        stamp = bulk.stamp
        rows = [  # in the order of the events table's columns
            (
                e.partition,
                e.offset,
                str(e.envelope.event_id),
                e.envelope.aggregate_id,
                e.envelope.aggregate_version,
                e.envelope.type,
                stamp(e.envelope.occurred_at),
                str(e.envelope.command_id) if e.envelope.command_id else None,
                # the payload is the upcast (current) model: store its version, so that a
                # later reader upcasts rows from the version they are really in
                e.payload.schema_version,
                JsonText(e.payload.model_dump_json()),
                e.envelope.actor,
            )
            for e in events
        ]
        # a plain INSERT: a second application of an event violates the stream's unique key
        bulk.write_tuples(conn, t.events, rows, upsert=False)

    # -- reading -----------------------------------------------------------------------------

    async def read_generation(self, *, max_age_s: float = 1.0) -> int:
        """The active generation, cached for `max_age_s` (queries run on many requests)."""
        now = time.monotonic()
        if self._active_cache is None or now - self._active_cache[1] > max_age_s:
            self._active_cache = (await self.active_generation(), now)
        return self._active_cache[0]

    async def freshness(self, gen: int | None = None) -> dict[int, dict[str, Any]]:
        t = generation_tables(gen or await self.read_generation()).positions

        def body(conn: Connection) -> dict[int, dict[str, Any]]:
            return {
                int(r.log_partition): {
                    "next_offset": int(r.next_offset),
                    "applied_at": _utc(r.applied_at),
                    "last_event_at": _utc(r.last_event_at),
                }
                for r in conn.execute(sa.select(t))
            }

        return await self._run(body)

    @staticmethod
    def _post(row: Any) -> View:
        view = dict(row)
        for name in ("created_at", "updated_at", "published_at"):
            view[name] = _utc(view[name])
        return view

    async def get_post(self, post_id: str) -> View | None:
        t = generation_tables(await self.read_generation())

        def body(conn: Connection) -> View | None:
            row = (
                conn.execute(sa.select(t.posts).where(t.posts.c.post_id == post_id))
                .mappings()
                .first()
            )
            return self._post(row) if row else None

        return await self._run(body)

    async def get_author(self, author_id: str) -> View | None:
        """An author as projected: name and email as stored (sealed), `erased_at` once erased."""
        t = generation_tables(await self.read_generation())

        def body(conn: Connection) -> View | None:
            query = sa.select(t.authors).where(t.authors.c.author_id == author_id)
            row = conn.execute(query).mappings().first()
            if row is None:
                return None
            view = dict(row)
            for name in ("registered_at", "erased_at"):
                view[name] = _utc(view[name])
            return view

        return await self._run(body)

    async def list_posts(
        self,
        *,
        status: str | None = None,
        author_id: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        published_only: bool = False,
        also_by: str | None = None,
    ) -> tuple[list[View], str | None]:
        """Newest first; `cursor` continues after the last post of the previous page.

        `published_only` keeps only published posts and, whatever their status, those by
        `also_by` (the caller's own); filtered in the query, so pages stay full and the
        cursor right."""
        t = generation_tables(await self.read_generation())
        p = t.posts
        query = sa.select(p).order_by(p.c.created_at.desc(), p.c.post_id.desc()).limit(limit + 1)
        if published_only:
            public = p.c.status == "published"
            query = query.where(sa.or_(public, p.c.author_id == also_by) if also_by else public)
        if status:
            query = query.where(p.c.status == status)
        if author_id:
            query = query.where(p.c.author_id == author_id)
        if tag:
            query = query.where(
                p.c.post_id.in_(sa.select(t.post_tags.c.post_id).where(t.post_tags.c.tag == tag))
            )
        if cursor:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    p.c.created_at < created,
                    sa.and_(p.c.created_at == created, p.c.post_id < last_id),
                )
            )
        rows = await self._run(lambda c: [self._post(r) for r in c.execute(query).mappings()])
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["post_id"])
        return rows, next_cursor

    async def events(
        self,
        aggregate_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[View]:
        t = generation_tables(await self.read_generation()).events
        query = (
            sa.select(t)
            .where(t.c.aggregate_id == aggregate_id, t.c.aggregate_version >= from_version)
            .order_by(t.c.aggregate_version)
            .limit(limit)
        )
        if to_version is not None:
            query = query.where(t.c.aggregate_version <= to_version)
        if until is not None:
            query = query.where(t.c.occurred_at <= until)

        def body(conn: Connection) -> list[View]:
            out = []
            for row in conn.execute(query).mappings():
                view = dict(row)
                view["occurred_at"] = _utc(view["occurred_at"])
                out.append(upcast_row(view))
            return out

        return await self._run(body)

    async def authors_with_published_posts(self, author_ids: Iterable[str]) -> set[str]:
        """Those of `author_ids` with at least one published post now."""
        ids = sorted(set(author_ids))
        if not ids:
            return set()
        p = generation_tables(await self.read_generation()).posts

        def body(conn: Connection) -> set[str]:
            found: set[str] = set()
            for chunk in _chunks(ids):
                query = (
                    sa.select(p.c.author_id)
                    .where(p.c.author_id.in_(chunk), p.c.status == "published")
                    .distinct()
                )
                found.update(str(a) for a in conn.execute(query).scalars())
            return found

        return await self._run(body)

    async def stats(self, *, published_tags_only: bool = False) -> dict[str, Any]:
        """Counts over the read model; with `published_tags_only` the tag counts are those of
        published posts (a draft's tags say something of its content)."""
        t = generation_tables(await self.read_generation())
        p = t.posts
        day = sa.func.date(p.c.published_at)
        tag_query = sa.select(t.post_tags.c.tag, sa.func.count().label("n"))
        if published_tags_only:
            tag_query = tag_query.where(
                t.post_tags.c.post_id.in_(sa.select(p.c.post_id).where(p.c.status == "published"))
            )

        def body(conn: Connection) -> dict[str, Any]:
            by_status: dict[str, int] = dict(
                conn.execute(sa.select(p.c.status, sa.func.count()).group_by(p.c.status)).all()
            )
            tags = conn.execute(
                tag_query.group_by(t.post_tags.c.tag)
                .order_by(sa.desc("n"), t.post_tags.c.tag)
                .limit(50)
            ).all()
            per_day = conn.execute(
                sa.select(day.label("day"), sa.func.count())
                .where(p.c.published_at.is_not(None))
                .group_by(day)
                .order_by(day)
            ).all()
            authors = conn.execute(sa.select(sa.func.count()).select_from(t.authors)).scalar_one()
            events = conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar_one()
            return {
                "posts": sum(by_status.values()),
                "posts_by_status": {str(k): int(v) for k, v in by_status.items()},
                "tags": [{"tag": tag, "posts": int(n)} for tag, n in tags],
                "published_per_day": [{"day": str(d), "posts": int(n)} for d, n in per_day],
                "authors": int(authors),
                "events": int(events),
            }

        return await self._run(body)

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        if self._async is not None:
            await self._async.dispose()


def encode_cursor(created_at: datetime, post_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), post_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parse a cursor; ValueError when it was not made by `encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, post_id = json.loads(raw)
        return datetime.fromisoformat(created), str(post_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid cursor: {cursor[:40]!r}") from exc
