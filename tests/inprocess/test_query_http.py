"""The query service's HTTP edge in process: every route on `build_app` with a SQLite read store
(filled as the projector fills it) and the in-memory key store; freshness, read-your-writes,
time travel, personal fields opened and erased, and every problem the routes answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from query_service.bootstrap import QueryAdapters, build_app
from shared.http import PROBLEM_JSON
from shared.keystore import InMemoryKeyStore
from shared.messages import decode_event, encode_event
from shared.messages.base import Event
from shared.messages.blog import (
    AuthorRegistered,
    AuthorRenamed,
    PostCreated,
    PostEdited,
    PostSubmittedForReview,
)
from shared.personal import seal
from shared.readmodel.store import IndexedEvent, ReadStore
from shared.settings import QueryServiceSettings
from tests.inprocess.conftest import HTTPClient, as_caller

route = pytest.mark.route
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
APPLIED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class Log:
    """Events as the command service writes them: versions per aggregate, offsets on one
    partition (a transaction marker after each)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.offset = 0

    def event(self, aggregate: str, payload: Event, minutes: int) -> IndexedEvent:
        version = self.versions[aggregate] = self.versions.get(aggregate, 0) + 1
        encoded = encode_event(
            payload,
            event_id=uuid.uuid4(),
            aggregate_id=aggregate,
            aggregate_version=version,
            occurred_at=T0 + timedelta(minutes=minutes),
        )
        decoded = decode_event(encoded.value)
        self.offset += 2
        return IndexedEvent(decoded.envelope, decoded.payload, 0, self.offset - 2)


@pytest.fixture
async def keys() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture
async def store(tmp_path: Path, keys: InMemoryKeyStore) -> AsyncIterator[ReadStore]:
    """A read store holding: author `ada` (registered, renamed) with sealed personal fields,
    author `gone` whose key was deleted, post `p1` by ada (created, edited, submitted) and
    draft `p2` by gone."""
    store = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    await store.migrate()
    ada, gone = await keys.key_for("ada"), await keys.key_for("gone")
    log = Log()
    events = [
        log.event("ada", AuthorRegistered(name=seal("Ada", "ada", ada),
                                          email=seal("ada@example.org", "ada", ada)), 0),
        log.event("gone", AuthorRegistered(name=seal("Gone", "gone", gone),
                                           email=seal("g@example.org", "gone", gone)), 1),
        log.event("p1", PostCreated(author_id="ada", title="Hello", body="b", tags=["kafka"]), 2),
        log.event("p2", PostCreated(author_id="gone", title="Other", body="", tags=[]), 3),
        log.event("ada", AuthorRenamed(name=seal("Ada L.", "ada", ada)), 10),
        log.event("p1", PostEdited(title="Hello again"), 10),
        log.event("p1", PostSubmittedForReview(), 20),
    ]  # fmt: skip
    await store.apply_batch(1, 0, events, start_offset=0, next_offset=log.offset, now=APPLIED)
    await keys.erase("gone")
    yield store
    await store.close()


@pytest.fixture
def app(store: ReadStore, keys: InMemoryKeyStore) -> FastAPI:
    settings = QueryServiceSettings(consistency_wait_ms=50, http_body_limit_bytes=2048)
    return as_caller(build_app(settings, QueryAdapters(store=store, keys=keys)))


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM_JSON), r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def assert_fresh(r: Any) -> None:
    """The answer says how fresh it is: positions and applied-at, in headers and body."""
    assert r.status_code == 200, r.text
    assert r.headers["x-read-model-positions"] == "0:14"
    assert r.headers["x-read-model-applied-at"] == APPLIED.isoformat()
    assert r.json()["freshness"]["positions"] == {"0": 14}


@route("query", "GET /posts")
async def test_posts_are_listed_newest_first_filtered_and_paged(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /posts: newest first, with freshness; filters by status, author and tag; a page's
    `next_cursor` leads to the next page."""
    client = http(app)
    r = await client.get("/posts")
    assert_fresh(r)
    assert [p["post_id"] for p in r.json()["items"]] == ["p2", "p1"]
    by = await client.get("/posts", params={"status": "in_review", "author": "ada", "tag": "kafka"})
    assert [p["post_id"] for p in by.json()["items"]] == ["p1"]
    first = await client.get("/posts", params={"limit": 1})
    assert [p["post_id"] for p in first.json()["items"]] == ["p2"]
    rest = await client.get("/posts", params={"limit": 1, "cursor": first.json()["next_cursor"]})
    assert [p["post_id"] for p in rest.json()["items"]] == ["p1"]


@route("query", "GET /authors/{author_id}/posts")
async def test_an_authors_posts_are_listed_with_a_status_filter(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /authors/{id}/posts: that author's posts only; `status` filters them."""
    r = await http(app).get("/authors/ada/posts")
    assert_fresh(r)
    assert [p["post_id"] for p in r.json()["items"]] == ["p1"]
    drafts = await http(app).get("/authors/ada/posts", params={"status": "draft"})
    assert drafts.json()["items"] == []


@route("query", "GET /posts/{post_id}")
async def test_a_post_now_at_a_version_and_at_a_time(http: HTTPClient, app: FastAPI) -> None:
    """GET /posts/{id}: the post now; `?version=1` as created; `?at=` as it was then."""
    client = http(app)
    now = await client.get("/posts/p1")
    assert_fresh(now)
    assert (now.json()["title"], now.json()["status"], now.json()["version"]) == (
        "Hello again", "in_review", 3,
    )  # fmt: skip
    v1 = await client.get("/posts/p1", params={"version": 1})
    assert (v1.json()["title"], v1.json()["version"]) == ("Hello", 1)
    at = await client.get("/posts/p1", params={"at": (T0 + timedelta(minutes=15)).isoformat()})
    assert (at.json()["title"], at.json()["status"]) == ("Hello again", "draft")


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        pytest.param("/posts/nope", {}, "post_not_found",
                     marks=route("query", "GET /posts/{post_id}")),
        pytest.param("/posts/p1", {"version": 9}, "post_not_found",
                     marks=route("query", "GET /posts/{post_id}")),
        pytest.param("/posts/p1", {"at": "2020-01-01T00:00:00Z"}, "post_not_found",
                     marks=route("query", "GET /posts/{post_id}")),
        pytest.param("/posts/ada", {"version": 1}, "post_not_found",
                     marks=route("query", "GET /posts/{post_id}")),
        pytest.param("/authors/nobody", {}, "author_not_found",
                     marks=route("query", "GET /authors/{author_id}")),
        pytest.param("/authors/ada", {"version": 7}, "author_not_found",
                     marks=route("query", "GET /authors/{author_id}")),
    ],
)  # fmt: skip
async def test_what_does_not_exist_is_404_with_the_kind_in_the_code(
    http: HTTPClient, app: FastAPI, path: str, params: dict[str, Any], code: str
) -> None:
    """No such post or author, not at that version or time, or an id of another kind:
    404 `post_not_found` / `author_not_found`."""
    assert_problem(await http(app).get(path, params=params), 404, code)


@route("query", "GET /authors/{author_id}")
async def test_an_authors_personal_fields_are_opened_with_its_key(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /authors/{id}: name and email opened; `?version=1` gives the name as registered."""
    r = await http(app).get("/authors/ada")
    assert_fresh(r)
    assert (r.json()["name"], r.json()["email"], r.json()["erased"]) == (
        "Ada L.", "ada@example.org", False,
    )  # fmt: skip
    v1 = await http(app).get("/authors/ada", params={"version": 1})
    assert v1.json()["name"] == "Ada"


@route("query", "GET /authors/{author_id}")
async def test_an_author_whose_key_is_gone_reads_as_erased(http: HTTPClient, app: FastAPI) -> None:
    """The key of the author was deleted: name and email null, listed in `erased_fields`."""
    r = await http(app).get("/authors/gone")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["email"], body["erased"]) == (None, None, True)
    assert sorted(body["erased_fields"]) == ["email", "name"]


@route("query", "GET /streams/{aggregate_id}/events")
async def test_a_stream_lists_its_events_in_order_with_personal_fields_opened(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /streams/{id}/events: the events in version order with their positions, personal
    fields opened (or null and listed when the subject's key is gone); bounded by versions."""
    client = http(app)
    r = await client.get("/streams/ada/events")
    assert_fresh(r)
    events = r.json()["events"]
    assert [e["type"] for e in events] == ["AuthorRegistered", "AuthorRenamed"]
    assert events[0]["payload"]["name"] == "Ada" and events[0]["erased_fields"] == []
    gone = (await client.get("/streams/gone/events")).json()["events"]
    assert gone[0]["payload"]["name"] is None and sorted(gone[0]["erased_fields"]) == [
        "email", "name",
    ]  # fmt: skip
    part = await client.get("/streams/p1/events", params={"from_version": 2, "to_version": 2})
    assert [e["aggregate_version"] for e in part.json()["events"]] == [2]


@route("query", "GET /stats")
async def test_stats_count_posts_and_authors(http: HTTPClient, app: FastAPI) -> None:
    """GET /stats: counts over the read model, with its freshness."""
    r = await http(app).get("/stats")
    assert_fresh(r)
    assert r.json()["posts_by_status"] == {"draft": 1, "in_review": 1}


READS = [
    ("/posts", "GET /posts"),
    ("/authors/ada/posts", "GET /authors/{author_id}/posts"),
    ("/posts/p1", "GET /posts/{post_id}"),
    ("/authors/ada", "GET /authors/{author_id}"),
    ("/streams/p1/events", "GET /streams/{aggregate_id}/events"),
    ("/stats", "GET /stats"),
]


@pytest.mark.parametrize("path", [pytest.param(p, marks=route("query", r), id=p) for p, r in READS])
async def test_a_consistency_token_already_reached_answers_at_once(
    http: HTTPClient, app: FastAPI, path: str
) -> None:
    """`X-Consistency-Token` at positions the read model has applied: 200."""
    r = await http(app).get(path, headers={"X-Consistency-Token": "0:13"})
    assert_fresh(r)


@pytest.mark.parametrize("path", [pytest.param(p, marks=route("query", r), id=p) for p, r in READS])
async def test_a_consistency_token_not_reached_in_time_is_503_with_retry_after(
    http: HTTPClient, app: FastAPI, path: str
) -> None:
    """A token beyond the applied positions: after the wait, 503 `not_consistent_yet` with
    `Retry-After` and the missing positions (partition 0 up to 14, partition 3 unknown)."""
    r = await http(app).get(path, headers={"X-Consistency-Token": "0:14,3:0"})
    body = assert_problem(r, 503, "not_consistent_yet")
    assert body["missing"] == {"0": 14, "3": 0}
    assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("path", "params", "headers", "field"),
    [
        pytest.param("/stats", {}, {"X-Consistency-Token": "0:1,"}, "header.X-Consistency-Token",
                     marks=route("query", "GET /stats")),
        pytest.param("/posts", {"status": "lost"}, {}, "query.status",
                     marks=route("query", "GET /posts")),
        pytest.param("/posts", {"limit": 0}, {}, "query.limit", marks=route("query", "GET /posts")),
        pytest.param("/posts", {"cursor": "a b"}, {}, "query.cursor",
                     marks=route("query", "GET /posts")),
        pytest.param("/authors/-x/posts", {}, {}, "path.author_id",
                     marks=route("query", "GET /authors/{author_id}/posts")),
        pytest.param("/posts/p1", {"version": "66821475735271825408"}, {}, "query.version",
                     marks=route("query", "GET /posts/{post_id}")),
        pytest.param("/posts/p1", {"at": "1700000000"}, {}, "query.at",
                     marks=route("query", "GET /posts/{post_id}")),
        pytest.param("/authors/ada", {"version": 0}, {}, "query.version",
                     marks=route("query", "GET /authors/{author_id}")),
        pytest.param("/streams/p1/events", {"from_version": 0}, {}, "query.from_version",
                     marks=route("query", "GET /streams/{aggregate_id}/events")),
        pytest.param("/streams/p1/events", {"limit": 1001}, {}, "query.limit",
                     marks=route("query", "GET /streams/{aggregate_id}/events")),
    ],
)  # fmt: skip
async def test_an_invalid_query_is_a_422_naming_the_parameter(
    http: HTTPClient,
    app: FastAPI,
    path: str,
    params: dict[str, Any],
    headers: dict[str, str],
    field: str,
) -> None:
    """A malformed token, status, limit, cursor, id, version (also beyond 64 bits) or time:
    422 `invalid_request` naming the parameter, before any wait or read."""
    r = await http(app).get(path, params=params, headers=headers)
    body = assert_problem(r, 422, "invalid_request")
    assert [e["field"] for e in body["errors"]] == [field]


@route("query", "GET /posts")
async def test_a_cursor_that_decodes_to_nothing_is_a_422_invalid_cursor(
    http: HTTPClient, app: FastAPI
) -> None:
    """A cursor of the right alphabet that is no cursor: 422 `invalid_cursor`."""
    assert_problem(await http(app).get("/posts", params={"cursor": "abc"}), 422, "invalid_cursor")


async def test_a_write_method_on_the_query_service_is_405(http: HTTPClient, app: FastAPI) -> None:
    """POST /posts on the query service: 405 problem with `Allow: GET`."""
    r = await http(app).post("/posts", json={})
    assert_problem(r, 405, "http_405")
    assert r.headers["allow"] == "GET"
