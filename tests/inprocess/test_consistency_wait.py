"""The consistency-token wait of the query service: a request waiting for positions the read
model has not applied is answered once another writer (the projector, with its own connection)
commits them, found by the query service's adaptive poll."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from query_service.bootstrap import QueryAdapters, build_app
from shared.keystore import InMemoryKeyStore
from shared.messages import decode_event, encode_event
from shared.messages.blog import PostCreated
from shared.readmodel.store import IndexedEvent, ReadStore
from shared.settings import QueryServiceSettings
from tests.inprocess.conftest import HTTPClient, as_caller

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def created(post_id: str, offset: int) -> IndexedEvent:
    encoded = encode_event(
        PostCreated(author_id="ada", title=post_id, body="", tags=[]),
        event_id=uuid.uuid4(),
        aggregate_id=post_id,
        aggregate_version=1,
        occurred_at=NOW,
    )
    decoded = decode_event(encoded.value)
    return IndexedEvent(decoded.envelope, decoded.payload, 0, offset)


@pytest.fixture
async def projector_store(tmp_path: Path) -> AsyncIterator[ReadStore]:
    """The projector's side: a writer on the database, with p1 at offset 0 applied."""
    store = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    await store.migrate()
    await store.apply_batch(1, 0, [created("p1", 0)], start_offset=0, next_offset=2, now=NOW)
    yield store
    await store.close()


@pytest.mark.route("query", "GET /posts/{post_id}")
async def test_a_waiting_request_is_answered_once_the_projector_commits(
    http: HTTPClient, projector_store: ReadStore
) -> None:
    """GET with a token beyond the applied positions waits; when another connection commits
    the next batch, the answer is 200 from the new positions (not 503 after the wait)."""
    store = ReadStore(projector_store.url)
    settings = QueryServiceSettings(consistency_wait_ms=30_000, consistency_poll_ms=50)
    app = as_caller(build_app(settings, QueryAdapters(store=store, keys=InMemoryKeyStore())))
    watcher = app.state.position_watcher
    try:
        request = asyncio.create_task(
            http(app).get("/posts/p2", headers={"X-Consistency-Token": "0:2"})
        )
        async with asyncio.timeout(10):
            # the watcher has no event for "a request waits"; bounded by the timeout above
            while watcher._waiters == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        reads_while_waiting = watcher.reads
        await projector_store.apply_batch(
            1, 0, [created("p2", 2)], start_offset=2, next_offset=4, now=NOW
        )
        r = await request
        assert r.status_code == 200, r.text
        assert r.json()["post_id"] == "p2"
        assert r.headers["x-read-model-positions"] == "0:4"
        assert watcher.reads > reads_while_waiting  # found by a read after the commit
        assert watcher._waiters == 0
    finally:
        await store.close()
