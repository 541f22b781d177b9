"""The query service and the projector when the read store's database is gone: every query
answers 503 `read_store_unavailable` (problem+json, `retriable`, Retry-After), not 500 and not a
hang, also a query waiting for its consistency token when the database goes away during the
wait; /health is 503 with the reason. The store is a real `ReadStore` on a port where nothing
listens (or, for the wait, one that stops answering after its first read)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from esctl.localstack.kafka import free_port
from query_service import bootstrap as query
from shared.http import PROBLEM_JSON
from shared.keystore import InMemoryKeyStore
from shared.readmodel.store import ReadStore, ReadStoreUnavailable
from tests.inprocess.conftest import AppMaker, HTTPClient

QUERIES = [
    ("GET /posts", "/posts"),
    ("GET /posts/{post_id}", "/posts/p-1"),
    ("GET /authors/{author_id}", "/authors/a-1"),
    ("GET /authors/{author_id}/posts", "/authors/a-1/posts"),
    ("GET /streams/{aggregate_id}/events", "/streams/p-1/events"),
    ("GET /stats", "/stats"),
]


@pytest.fixture
async def gone() -> AsyncIterator[ReadStore]:
    store = ReadStore(f"postgresql://postgres@127.0.0.1:{free_port()}/readstore")
    yield store
    await store.close()


def assert_read_store_unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.headers["retry-after"] == "2"
    body = r.json()
    assert body["code"] == "read_store_unavailable" and body["retriable"] is True
    assert "does not answer" in body["detail"] and "refused" in body["detail"].lower()


@pytest.mark.parametrize(
    ("path", "token"),
    [
        pytest.param(path, token, marks=pytest.mark.route("query", route))
        for route, path in QUERIES
        for token in (None, "0:5")
    ],
)
async def test_every_query_answers_503_read_store_unavailable_when_the_database_is_gone(
    http: HTTPClient, make: AppMaker, gone: ReadStore, path: str, token: str | None
) -> None:
    headers = {"X-Consistency-Token": token} if token else {}
    assert_read_store_unavailable(
        await http(make("query", read_store=gone)).get(path, headers=headers)
    )


@pytest.mark.parametrize(
    "service",
    [pytest.param(s, marks=pytest.mark.route(s, "GET /health")) for s in ("projector", "query")],
)
async def test_health_says_read_store_unavailable_with_where_and_why(
    http: HTTPClient, make: AppMaker, gone: ReadStore, service: str
) -> None:
    r = await http(make(service, read_store=gone)).get("/health")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unavailable" and body["reason"] == "read_store_unavailable"
    assert gone.where in body["read_store"]


class GoesAway:
    """Positions at 0 on the first read; then the database is gone."""

    def __init__(self, store: ReadStore) -> None:
        self.store = store
        self.reads = 0

    async def freshness(self, gen: int | None = None) -> dict[int, dict[str, Any]]:
        self.reads += 1
        if self.reads == 1:
            return {0: {"next_offset": 0, "applied_at": None, "last_event_at": None}}
        raise ReadStoreUnavailable("the read store at nowhere does not answer (gone)")


@pytest.mark.route("query", "GET /stats")
async def test_a_wait_for_a_token_ends_with_read_store_unavailable_when_the_database_goes(
    http: HTTPClient, store: ReadStore
) -> None:
    """Not `not_consistent_yet` after the whole wait: the watcher's failed read ends it."""
    settings = query.SETTINGS(consistency_wait_ms=60_000)
    app = query.build_app(settings, query.QueryAdapters(store, InMemoryKeyStore()))
    watcher = app.state.position_watcher
    watcher.store = GoesAway(store)
    r = await http(app).get("/stats", headers={"X-Consistency-Token": "0:5"})
    assert r.status_code == 503 and r.json()["code"] == "read_store_unavailable", r.text
    assert r.json()["detail"].endswith("(gone)")
