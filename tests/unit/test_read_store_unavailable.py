"""The read store says `read_store_unavailable` (retriable) when its database is gone, and only
then: refused, dropped, shutting down, starting up, or slower than the timeouts; a fault of the
query itself stays what it is. Against sockets, no database server: a port nobody listens on,
and one that accepts connections and never answers (a connect that would hang for asyncpg's
default minute is given up after `connect_timeout_s`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import asyncpg
import pytest
import sqlalchemy as sa

from esctl.localstack.kafka import free_port
from shared.readmodel.store import ReadStore, ReadStoreUnavailable, _unavailable


def wrapped(inner: BaseException) -> sa.exc.DBAPIError:
    """How SQLAlchemy hands a driver's error on."""
    return sa.exc.DBAPIError.instance("SELECT 1", None, inner, Exception)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.InterfaceError("cannot perform operation: connection is closed"),
        wrapped(asyncpg.exceptions.AdminShutdownError("terminating connection")),
    ],
    ids=repr,
)
def test_the_database_being_gone_is_recognised_at_any_depth(error: BaseException) -> None:
    assert _unavailable(error)
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("while running a statement") from inner
    except RuntimeError as outer:
        assert _unavailable(outer)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedTableError('relation "posts_g1" does not exist'),
        wrapped(asyncpg.exceptions.UniqueViolationError("duplicate key")),
        ValueError("invalid cursor"),
    ],
    ids=repr,
)
def test_a_fault_of_the_query_is_not_mistaken_for_an_absent_database(error: Exception) -> None:
    assert not _unavailable(error)


async def test_a_port_nobody_listens_on_is_read_store_unavailable_naming_where() -> None:
    port = free_port()
    store = ReadStore(f"postgresql://postgres@127.0.0.1:{port}/readstore", connect_timeout_s=2)
    try:
        with pytest.raises(ReadStoreUnavailable) as caught:
            await store.freshness(1)
    finally:
        await store.close()
    assert caught.value.code == "read_store_unavailable" and caught.value.retriable
    assert f"127.0.0.1:{port}/readstore" in caught.value.message
    assert "refused" in caught.value.message.lower() or "Connect" in caught.value.message


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_a_server_that_never_answers_is_given_up_after_the_connect_timeout(
    silent_server: int,
) -> None:
    store = ReadStore(f"postgresql://postgres@127.0.0.1:{silent_server}/db", connect_timeout_s=0.5)
    try:
        # the outer bound only keeps a broken build from hanging the suite
        async with asyncio.timeout(30):
            with pytest.raises(ReadStoreUnavailable) as caught:
                await store.freshness(1)
    finally:
        await store.close()
    assert "Timeout" in caught.value.message, caught.value.message
