"""Personal data and drafts by caller, in process: every query route that returns posts or
personal fields, called as an anonymous caller, another author, a reviewer, the author and an
admin; each sees exactly what the rules allow (README, "Security: ownership, audit and personal
data"), and the audit trail names the actor of every event."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from query_service.bootstrap import QueryAdapters, build_app
from shared.keystore import InMemoryKeyStore
from shared.messages import decode_event, encode_event
from shared.messages.base import Event
from shared.messages.blog import (
    AuthorRegistered,
    PostApproved,
    PostCreated,
    PostEdited,
    PostPublished,
    PostRejected,
    PostSubmittedForReview,
    PostUnpublished,
)
from shared.personal import seal
from shared.principal import ANONYMOUS, LOCAL_DEMO, Principal
from shared.readmodel.store import IndexedEvent, ReadStore
from shared.settings import QueryServiceSettings
from tests.inprocess.conftest import HTTPClient, as_caller

route = pytest.mark.route
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

CALLERS = {
    "anonymous": ANONYMOUS,
    "other author": Principal("bob", frozenset({"author"}), authenticated=True),
    "reviewer": Principal("rev", frozenset({"reviewer"}), authenticated=True),
    "the author": Principal("ada", frozenset({"author"}), authenticated=True),
    "admin": Principal("root", frozenset({"admin"}), authenticated=True),
}
ALL = set(CALLERS)


class Log:
    """Events as the command service writes them, each with its actor."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.offset = 0

    def event(self, aggregate: str, payload: Event, actor: str | None) -> IndexedEvent:
        version = self.versions[aggregate] = self.versions.get(aggregate, 0) + 1
        encoded = encode_event(
            payload,
            event_id=uuid.uuid4(),
            aggregate_id=aggregate,
            aggregate_version=version,
            occurred_at=T0 + timedelta(minutes=self.offset),
            actor=actor,
        )
        decoded = decode_event(encoded.value)
        self.offset += 2
        return IndexedEvent(decoded.envelope, decoded.payload, 0, self.offset - 2)


@pytest.fixture
async def keys() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture
async def store(tmp_path: Path, keys: InMemoryKeyStore) -> AsyncIterator[ReadStore]:
    """ada: a published post (its first draft had another title and was rejected once), a
    draft, a post published then unpublished. bob: one post in review, nothing published. The
    last event has no actor (written before actors were recorded)."""
    store = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    await store.migrate()
    ada, bob = await keys.key_for("ada"), await keys.key_for("bob")
    log = Log()
    events = [
        log.event("ada", AuthorRegistered(name=seal("Ada Lovelace", "ada", ada),
                                          email=seal("ada@example.org", "ada", ada)), "ada"),
        log.event("bob", AuthorRegistered(name=seal("Bob Draftsman", "bob", bob),
                                          email=seal("bob@example.org", "bob", bob)), "bob"),
        log.event("p-pub", PostCreated(author_id="ada", title="Early Draft Of Public",
                                       body="", tags=["public-tag"]), "ada"),
        log.event("p-pub", PostSubmittedForReview(), "ada"),
        log.event("p-pub", PostRejected(reason="Needs Work Badly", reviewer="rev"), "rev"),
        log.event("p-pub", PostEdited(title="Public Post"), "ada"),
        log.event("p-pub", PostSubmittedForReview(), "ada"),
        log.event("p-pub", PostApproved(approved_by="rev"), "rev"),
        log.event("p-pub", PostPublished(), "ed"),
        log.event("p-draft", PostCreated(author_id="ada", title="Ada Secret Draft",
                                         body="", tags=["secret-tag"]), "ada"),
        log.event("p-bob", PostCreated(author_id="bob", title="Bob Secret Review", body=""), "bob"),
        log.event("p-bob", PostSubmittedForReview(), "bob"),
        log.event("p-unpub", PostCreated(author_id="ada", title="Withdrawn Post", body=""), "ed"),
        log.event("p-unpub", PostSubmittedForReview(), "ed"),
        log.event("p-unpub", PostApproved(), "rev"),
        log.event("p-unpub", PostPublished(), "ed"),
        log.event("p-unpub", PostUnpublished(reason="outdated"), None),
    ]  # fmt: skip
    await store.apply_batch(1, 0, events, start_offset=0, next_offset=log.offset)
    yield store
    await store.close()


@pytest.fixture
def app(store: ReadStore, keys: InMemoryKeyStore) -> FastAPI:
    return build_app(QueryServiceSettings(), QueryAdapters(store=store, keys=keys))


async def get(http: HTTPClient, app: FastAPI, who: str, url: str) -> Any:
    return await http(as_caller(app, CALLERS[who])).get(url)


POSTS = ("p-pub", "p-draft", "p-bob", "p-unpub")
#: what each caller may read; every other secret must not appear in any answer it gets
SECRETS: dict[str, set[str]] = {
    "ada@example.org": {"the author", "admin"},
    "bob@example.org": {"other author", "admin"},
    "Bob Draftsman": {"other author", "reviewer", "admin"},
    "Ada Secret Draft": {"the author", "reviewer", "admin"},
    "secret-tag": {"the author", "reviewer", "admin"},
    "Early Draft Of Public": {"the author", "reviewer", "admin"},
    "Needs Work Badly": {"the author", "reviewer", "admin"},  # a review of a published post
    "Withdrawn Post": {"the author", "reviewer", "admin"},
    "Bob Secret Review": {"other author", "reviewer", "admin"},
    "Ada Lovelace": ALL,  # the name of an author with a published post is public
    "Public Post": ALL,
}
URLS = [
    "/posts",
    "/posts?status=draft",
    "/posts?status=in_review",
    "/posts?status=unpublished",
    "/posts?tag=secret-tag",
    "/posts?author=bob",
    "/authors/ada/posts",
    "/authors/bob/posts",
    *(f"/posts/{p}" for p in POSTS),
    *(f"/posts/{p}?version=1" for p in POSTS),
    f"/posts/p-pub?at={(T0 + timedelta(minutes=5)).isoformat().replace('+', '%2B')}",
    "/posts/p-unpub?version=4",
    "/authors/ada",
    "/authors/bob",
    "/authors/ada?version=1",
    "/authors/bob?version=1",
    *(f"/streams/{a}/events" for a in ("ada", "bob", *POSTS)),
    "/streams/p-pub/events?from_version=2&to_version=3",
    "/stats",
]


@route("query", "GET /posts")
@route("query", "GET /posts/{post_id}")
@route("query", "GET /authors/{author_id}")
@route("query", "GET /authors/{author_id}/posts")
@route("query", "GET /streams/{aggregate_id}/events")
@route("query", "GET /stats")
@pytest.mark.parametrize("who", list(CALLERS))
async def test_no_route_returns_an_email_or_a_draft_to_a_caller_who_may_not_see_it(
    http: HTTPClient, app: FastAPI, who: str
) -> None:
    """Every route (lists, filters, one post now and as it was, authors, streams, stats) is
    called as `who`: each email, unpublished title, draft tag, review and unpublished author's
    name appears in some answer exactly when the rules let `who` read it."""
    texts = []
    for url in URLS:
        r = await get(http, app, who, url)
        assert r.status_code in (200, 404), (url, r.text)
        texts.append(r.text)
    seen = "\n".join(texts)
    shown = {secret for secret in SECRETS if secret in seen}
    assert shown == {secret for secret, allowed in SECRETS.items() if who in allowed}


#: post -> the callers who may read it (200; everyone else 404, as for no post at all)
READERS = {
    "p-pub": ALL,
    "p-draft": {"the author", "reviewer", "admin"},
    "p-bob": {"other author", "reviewer", "admin"},
    "p-unpub": {"the author", "reviewer", "admin"},
}


@route("query", "GET /posts/{post_id}")
@pytest.mark.parametrize("who", list(CALLERS))
async def test_a_post_the_caller_may_not_read_is_404_as_if_there_were_none(
    http: HTTPClient, app: FastAPI, who: str
) -> None:
    """A post is 200 for its readers and 404 `post_not_found` for anyone else, now and as it
    was; a published post as it was before publication only for the readers of drafts."""
    for post, readers in READERS.items():
        r = await get(http, app, who, f"/posts/{post}")
        expected = 200 if who in readers else 404
        assert r.status_code == expected, (post, r.text)
        if expected == 404:
            assert r.json()["code"] == "post_not_found"
            missing = await get(http, app, who, "/posts/no-such-post")
            assert r.json()["detail"] == missing.json()["detail"].replace("no-such-post", post)
    early = await get(http, app, who, "/posts/p-pub?version=1")
    assert early.status_code == (200 if who in READERS["p-draft"] else 404), early.text
    was_public = await get(http, app, who, "/posts/p-unpub?version=4")
    assert was_public.status_code == (200 if who in READERS["p-unpub"] else 404)


@route("query", "GET /posts")
@route("query", "GET /authors/{author_id}/posts")
@pytest.mark.parametrize(
    ("who", "visible"),
    [
        ("anonymous", {"p-pub"}),
        ("other author", {"p-pub", "p-bob"}),
        ("reviewer", set(POSTS)),
        ("the author", {"p-pub", "p-draft", "p-unpub"}),
        ("admin", set(POSTS)),
    ],
)
async def test_lists_hold_only_the_posts_the_caller_may_read(
    http: HTTPClient, app: FastAPI, who: str, visible: set[str]
) -> None:
    """GET /posts and GET /authors/{id}/posts filter rows by caller, and pages stay full."""
    r = await get(http, app, who, "/posts")
    assert {p["post_id"] for p in r.json()["items"]} == visible
    ada = await get(http, app, who, "/authors/ada/posts")
    assert {p["post_id"] for p in ada.json()["items"]} == visible - {"p-bob"}
    first = await get(http, app, who, "/posts?limit=1")
    assert len(first.json()["items"]) == 1  # filtered in the query: no empty first page


#: per caller: ada's and bob's (name, email) as shown, or None where the caller gets a 404 (an
#: author's page) or an empty stream; the same rules on both routes
AUTHOR_FIELDS_SEEN = [
    ("anonymous", ("Ada Lovelace", None), None),
    ("other author", ("Ada Lovelace", None), ("Bob Draftsman", "bob@example.org")),
    ("reviewer", ("Ada Lovelace", None), ("Bob Draftsman", None)),
    ("the author", ("Ada Lovelace", "ada@example.org"), None),
    ("admin", ("Ada Lovelace", "ada@example.org"), ("Bob Draftsman", "bob@example.org")),
]


@route("query", "GET /authors/{author_id}")
@pytest.mark.parametrize(
    ("who", "ada", "bob"),
    AUTHOR_FIELDS_SEEN,
)
async def test_an_authors_email_only_for_that_author_and_admins_the_name_once_published(
    http: HTTPClient,
    app: FastAPI,
    who: str,
    ada: tuple[str, str | None],
    bob: tuple[str, str | None] | None,
) -> None:
    """ada has a published post: her name is public, her email hers and the admins'. bob has
    none: he is 404 for whoever may read nothing of him. Withheld fields are null and named."""
    for author, expected in (("ada", ada), ("bob", bob)):
        for url in (f"/authors/{author}", f"/authors/{author}?version=1"):
            r = await get(http, app, who, url)
            if expected is None:
                assert r.status_code == 404 and r.json()["code"] == "author_not_found", r.text
                continue
            body = r.json()
            assert (body["name"], body["email"]) == expected, url
            assert body["withheld_fields"] == ([] if expected[1] else ["email"])


@route("query", "GET /streams/{aggregate_id}/events")
@pytest.mark.parametrize("who", list(CALLERS))
async def test_the_audit_trail_names_the_actor_of_every_event_for_those_who_may_read_it(
    http: HTTPClient, app: FastAPI, who: str
) -> None:
    """A post's stream shows who asked for each event (null for an event written before
    actors were recorded) to its author, reviewers and admins; to anyone else it is empty, as
    for a stream that does not exist."""
    streams = {
        "p-pub": ["ada", "ada", "rev", "ada", "ada", "rev", "ed"],
        "p-unpub": ["ed", "ed", "rev", "ed", None],
    }
    for post, actors in streams.items():
        r = await get(http, app, who, f"/streams/{post}/events")
        events = r.json()["events"]
        if who in READERS["p-draft"]:
            assert [e["actor"] for e in events] == actors
            assert [e["aggregate_version"] for e in events] == list(range(1, len(actors) + 1))
            assert all(e["command_id"] is None for e in events)
        else:
            assert events == []
    unknown = await get(http, app, who, "/streams/no-such-stream/events")
    assert unknown.json()["events"] == []


@route("query", "GET /streams/{aggregate_id}/events")
@pytest.mark.parametrize(
    ("who", "ada", "bob"),
    AUTHOR_FIELDS_SEEN,
)
async def test_an_authors_stream_withholds_what_the_caller_may_not_read(
    http: HTTPClient,
    app: FastAPI,
    who: str,
    ada: tuple[str, str | None],
    bob: tuple[str, str | None] | None,
) -> None:
    """The decrypted name and email in an author's events follow the rules of GET
    /authors/{id}: withheld ones are null and listed per event; an author the caller may
    read nothing of has an empty stream."""
    for author, expected in (("ada", ada), ("bob", bob)):
        r = await get(http, app, who, f"/streams/{author}/events")
        events = r.json()["events"]
        if expected is None:
            assert events == []
            continue
        [registered] = events
        assert registered["actor"] == author
        assert (registered["payload"]["name"], registered["payload"]["email"]) == expected
        assert registered["withheld_fields"] == ([] if expected[1] else ["email"])
        assert registered["erased_fields"] == []


@route("query", "GET /stats")
async def test_stats_count_the_tags_of_unpublished_posts_only_for_their_readers(
    http: HTTPClient, app: FastAPI
) -> None:
    """The tag counts an anonymous caller gets are of published posts; a reviewer's of all."""
    public = (await get(http, app, "anonymous", "/stats")).json()
    assert [t["tag"] for t in public["tags"]] == ["public-tag"]
    everything = (await get(http, app, "reviewer", "/stats")).json()
    assert {t["tag"] for t in everything["tags"]} == {"public-tag", "secret-tag"}
    assert public["posts"] == everything["posts"] == 4  # counts, no content


@route("query", "GET /posts")
@route("query", "GET /authors/{author_id}")
async def test_with_authentication_off_every_caller_reads_everything(
    http: HTTPClient, app: FastAPI
) -> None:
    """LOCAL_DEMO (authentication off) reads every post and every personal field."""
    api = http(as_caller(app, LOCAL_DEMO))
    r = await api.get("/posts")
    assert {p["post_id"] for p in r.json()["items"]} == set(POSTS)
    bob = (await api.get("/authors/bob")).json()
    assert (bob["email"], bob["withheld_fields"]) == ("bob@example.org", [])
