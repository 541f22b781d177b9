"""One contract for the read store, run against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.messages import decode_event, encode_event
from shared.messages.base import Event
from shared.messages.blog import (
    AuthorRegistered,
    AuthorRenamed,
    PostApproved,
    PostCreated,
    PostEdited,
    PostPublished,
    PostSubmittedForReview,
    SubjectErased,
)
from shared.readmodel.pipeline import IndexedEvent
from shared.readmodel.store import SCHEMA_VERSION, ReadStore, StaleBatch
from tests.conftest import fresh_database

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReadStore]:
    """A fresh, migrated read store of each kind."""
    if request.param == "sqlite":
        s = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
        await s.migrate()
        yield s
        await s.close()
        return
    server_url: str = request.getfixturevalue("postgres_url")
    async with fresh_database(server_url, "contract") as url:
        s = ReadStore(url, writer=True)
        try:
            await s.migrate()
            yield s
        finally:
            await s.close()


class Log:
    """Builds indexed events as the command service would write them."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.offsets: dict[int, int] = {}

    def event(
        self,
        aggregate: str,
        payload: Event,
        *,
        partition: int = 0,
        minutes: int = 0,
        actor: str | None = None,
    ) -> IndexedEvent:
        version = self.versions.get(aggregate, 0) + 1
        self.versions[aggregate] = version
        offset = self.offsets.get(partition, 0)
        self.offsets[partition] = offset + 2  # transaction markers take offsets too
        encoded = encode_event(
            payload,
            event_id=uuid.uuid4(),
            aggregate_id=aggregate,
            aggregate_version=version,
            occurred_at=T0 + timedelta(minutes=minutes),
            actor=actor,
        )
        decoded = decode_event(encoded.value)
        return IndexedEvent(decoded.envelope, decoded.payload, partition, offset)


async def apply(
    store: ReadStore, events: list[IndexedEvent], partition: int = 0, gen: int = 1
) -> None:
    start = (await store.positions(gen)).get(partition, 0)
    await store.apply_batch(
        gen, partition, events, start_offset=start, next_offset=events[-1].offset + 1
    )


async def test_migrations_are_idempotent_and_start_at_generation_one(store: ReadStore) -> None:
    """Migrating twice changes nothing; generation 1 is active and empty."""
    assert await store.migrate() == 1
    assert await store.active_generation() == 1
    assert await store.positions(1) == {}


async def test_an_erased_author_row_is_redacted_and_keeps_its_id_and_version(
    store: ReadStore,
) -> None:
    """SubjectErased empties name and email in the author row and stamps erased_at; another
    author is untouched."""
    log = Log()
    await apply(
        store,
        [
            log.event("a1", AuthorRegistered(name="sealed-1", email="sealed-2")),
            log.event("a2", AuthorRegistered(name="sealed-3", email="sealed-4")),
            log.event("a1", SubjectErased(fields=["name", "email"]), minutes=5),
        ],
    )
    erased = await store.get_author("a1")
    assert erased is not None
    assert (erased["name"], erased["email"], erased["version"]) == ("", "", 2)
    assert erased["erased_at"] == T0 + timedelta(minutes=5)
    kept = await store.get_author("a2")
    assert kept is not None and kept["name"] == "sealed-3" and kept["erased_at"] is None
    assert await store.get_author("nobody") is None


async def test_schema_1_stores_migrate_to_erasure_columns(store: ReadStore) -> None:
    """A store written by schema 1 (no authors.erased_at) gains the column on migrate, with
    its rows kept."""
    log = Log()
    await apply(store, [log.event("a1", AuthorRegistered(name="n", email="e"))])

    def downgrade(conn: Any) -> None:
        conn.execute(sa.text("ALTER TABLE authors_g1 DROP COLUMN erased_at"))
        conn.execute(sa.text("UPDATE read_model_meta SET value = '1' WHERE key = 'schema_version'"))

    await store._run(downgrade, write=True)
    assert await store.migrate() == 1
    assert await store.meta("schema_version") == str(SCHEMA_VERSION)
    await apply(store, [log.event("a1", SubjectErased(), minutes=1)])
    row = await store.get_author("a1")
    assert row is not None and row["erased_at"] is not None and row["version"] == 2


async def test_every_stored_event_keeps_its_actor(store: ReadStore) -> None:
    """The event index stores each event's actor (the audit trail); an event that names none
    reads as null."""
    log = Log()
    await apply(
        store,
        [
            log.event("p1", PostCreated(author_id="a1", title="T", body=""), actor="a1"),
            log.event("p1", PostSubmittedForReview(), minutes=1),
        ],
    )
    assert [e["actor"] for e in await store.events("p1")] == ["a1", None]


async def test_lists_by_reader_keep_published_posts_and_the_readers_own(store: ReadStore) -> None:
    """`published_only` keeps published posts and, with `also_by`, that author's others;
    `authors_with_published_posts` names the authors with a published post."""
    log = Log()
    await apply(
        store,
        [
            log.event("p1", PostCreated(author_id="a1", title="T", body="")),
            log.event("p2", PostCreated(author_id="a2", title="T", body=""), minutes=1),
            log.event("p3", PostCreated(author_id="a2", title="T", body=""), minutes=2),
            log.event("p3", PostSubmittedForReview(), minutes=3),
            log.event("p3", PostApproved(), minutes=4),
            log.event("p3", PostPublished(), minutes=5),
        ],
    )

    async def ids(**reader: Any) -> list[str]:
        rows, _ = await store.list_posts(**reader)
        return [r["post_id"] for r in rows]

    assert await ids() == ["p3", "p2", "p1"]
    assert await ids(published_only=True) == ["p3"]
    assert await ids(published_only=True, also_by="a1") == ["p3", "p1"]
    assert await ids(published_only=True, also_by="a1", limit=1) == ["p3"]
    assert await store.authors_with_published_posts(["a1", "a2", "a3"]) == {"a2"}
    assert await store.authors_with_published_posts([]) == set()


async def test_schema_2_stores_migrate_to_the_actor_column(store: ReadStore) -> None:
    """A store written by schema 2 (no events.actor) gains the column on migrate: the events
    stored before read with a null actor, those applied after keep theirs."""
    log = Log()
    await apply(store, [log.event("p1", PostCreated(author_id="a1", title="T", body=""))])

    def downgrade(conn: Any) -> None:
        conn.execute(sa.text("ALTER TABLE events_g1 DROP COLUMN actor"))
        conn.execute(sa.text("UPDATE read_model_meta SET value = '2' WHERE key = 'schema_version'"))

    await store._run(downgrade, write=True)
    assert await store.migrate() == 1
    assert await store.meta("schema_version") == str(SCHEMA_VERSION)
    await apply(store, [log.event("p1", PostEdited(title="U"), minutes=1, actor="ed")])
    assert [e["actor"] for e in await store.events("p1")] == [None, "ed"]


async def test_events_fold_into_post_rows_with_status_version_and_times(store: ReadStore) -> None:
    """A post's row is the fold of its events: content, status, version, UTC timestamps."""
    log = Log()
    await apply(
        store,
        [
            log.event("a1", AuthorRegistered(name="Ada", email="a@x.y")),
            log.event("p1", PostCreated(author_id="a1", title="T", body="B", tags=["k", "py"])),
            log.event("p1", PostEdited(title="T2"), minutes=1),
            log.event("p1", PostSubmittedForReview(), minutes=2),
            log.event("p1", PostApproved(), minutes=3),
            log.event("p1", PostPublished(), minutes=4),
        ],
    )
    post = await store.get_post("p1")
    assert post is not None
    assert (post["title"], post["body"], post["tags"]) == ("T2", "B", ["k", "py"])
    assert (post["status"], post["version"]) == ("published", 5)
    assert post["created_at"] == T0
    assert post["published_at"] == T0 + timedelta(minutes=4)
    assert await store.get_post("nope") is None
    assert (await store.positions(1)) == {0: 11}


async def test_a_batch_applies_only_from_the_stored_position(store: ReadStore) -> None:
    """A batch that does not start at the stored offset (a replay, or a zombie's) is refused
    and writes nothing."""
    log = Log()
    first = [log.event("p1", PostCreated(author_id="a", title="T", body=""))]
    await apply(store, first)
    again = [log.event("p1", PostEdited(title="X"))]
    with pytest.raises(StaleBatch):
        await store.apply_batch(1, 0, again, start_offset=0, next_offset=99)
    post = await store.get_post("p1")
    assert post is not None and post["title"] == "T"
    assert await store.positions(1) == {0: 1}


async def test_applying_the_same_event_twice_is_impossible(store: ReadStore) -> None:
    """Even with a forged start offset, the event index refuses a second copy of an event, and
    the whole batch (rows and position) rolls back."""
    log = Log()
    created = log.event("p1", PostCreated(author_id="a", title="T", body=""))
    await apply(store, [created])
    edit = log.event("p1", PostEdited(title="X"))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.apply_batch(1, 0, [edit, created], start_offset=1, next_offset=50)
    assert (await store.get_post("p1") or {})["title"] == "T"
    assert await store.positions(1) == {0: 1}


async def test_list_filters_and_cursor_pagination_cover_every_post_once(store: ReadStore) -> None:
    """Filters by status, author and tag; pages of 3 walk all posts newest first, no repeats."""
    log = Log()
    events = []
    for i in range(10):
        tag = "even" if i % 2 == 0 else "odd"
        created = PostCreated(author_id=f"a{i % 2}", title=f"T{i}", body="", tags=[tag])
        events.append(log.event(f"p{i}", created, minutes=i))
    events.append(log.event("p3", PostSubmittedForReview(), minutes=20))
    await apply(store, events)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.list_posts(limit=3, cursor=cursor)
        seen += [p["post_id"] for p in page]
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in reversed(range(10))]
    by_author, _ = await store.list_posts(author_id="a1", limit=50)
    assert {p["post_id"] for p in by_author} == {"p1", "p3", "p5", "p7", "p9"}
    in_review, _ = await store.list_posts(status="in_review")
    assert [p["post_id"] for p in in_review] == ["p3"]
    tagged, _ = await store.list_posts(tag="even", status="draft")
    assert {p["post_id"] for p in tagged} == {"p0", "p2", "p4", "p6", "p8"}


async def test_event_index_answers_streams_with_version_and_time_bounds(store: ReadStore) -> None:
    """Every event is indexed with its position; streams can be cut by version and time."""
    log = Log()
    await apply(
        store,
        [
            log.event("p1", PostCreated(author_id="a", title="T", body="")),
            log.event("p1", PostEdited(body="b"), minutes=5),
            log.event("p1", PostSubmittedForReview(), minutes=10),
        ],
    )
    stream = await store.events("p1")
    assert [(e["aggregate_version"], e["type"], e["log_offset"]) for e in stream] == [
        (1, "PostCreated", 0),
        (2, "PostEdited", 2),
        (3, "PostSubmittedForReview", 4),
    ]
    assert [
        e["aggregate_version"] for e in await store.events("p1", from_version=2, to_version=2)
    ] == [2]
    until = await store.events("p1", until=T0 + timedelta(minutes=5))
    assert [e["aggregate_version"] for e in until] == [1, 2]
    assert stream[0]["payload"]["title"] == "T"


async def test_stats_count_statuses_tags_publications_and_authors(store: ReadStore) -> None:
    """Stats summarise the model: posts per status, tag counts, publications per day."""
    log = Log()
    await apply(
        store,
        [
            log.event("a1", AuthorRegistered(name="A", email="a@x.y")),
            log.event("a1", AuthorRenamed(name="B")),
            log.event("p1", PostCreated(author_id="a1", title="T", body="", tags=["k"])),
            log.event("p2", PostCreated(author_id="a1", title="T", body="", tags=["k", "z"])),
            log.event("p2", PostSubmittedForReview()),
            log.event("p2", PostApproved()),
            log.event("p2", PostPublished()),
        ],
    )
    stats = await store.stats()
    assert stats["posts"] == 2 and stats["authors"] == 1 and stats["events"] == 7
    assert stats["posts_by_status"] == {"draft": 1, "published": 1}
    assert stats["tags"] == [{"tag": "k", "posts": 2}, {"tag": "z", "posts": 1}]
    assert stats["published_per_day"] == [{"day": "2026-11-27", "posts": 1}]


async def test_a_new_generation_is_built_beside_the_live_one_and_swapped_atomically(
    store: ReadStore,
) -> None:
    """Generation 2 fills while 1 answers; after the swap queries read 2, and writes aimed at
    the old generation are refused."""
    log = Log()
    created = log.event("p1", PostCreated(author_id="a", title="Live", body=""))
    await apply(store, [created])
    await store.create_generation(2)
    await store.apply_batch(2, 0, [created], start_offset=0, next_offset=1, require_active=False)
    assert (await store.get_post("p1") or {})["title"] == "Live"
    assert await store.swap_generation(2) == 1
    store._active_cache = None  # skip the 1 s cache in this test
    assert await store.active_generation() == 2
    assert (await store.get_post("p1") or {})["title"] == "Live"
    with pytest.raises(StaleBatch, match="no longer active"):
        await store.apply_batch(
            1, 0, [log.event("p1", PostEdited(title="X"))], start_offset=1, next_offset=3
        )
    await store.drop_generation(1)
    assert (await store.positions(2)) == {0: 1}


async def test_freshness_reports_position_and_times_per_partition(store: ReadStore) -> None:
    """Every partition's next offset, when it was applied and the last event's time."""
    log = Log()
    await apply(
        store,
        [log.event("p1", PostCreated(author_id="a", title="T", body=""), partition=1, minutes=7)],
        partition=1,
    )
    fresh = await store.freshness()
    assert fresh[1]["next_offset"] == 1
    assert fresh[1]["last_event_at"] == T0 + timedelta(minutes=7)
    assert fresh[1]["applied_at"].tzinfo is not None


async def test_concurrent_first_migrations_on_postgresql_take_turns(postgres_url: str) -> None:
    """The projector and the query service migrate a new database at the same moment: both
    succeed (concurrent CREATE TABLEs once collided in PostgreSQL's catalog)."""
    for _ in range(3):
        async with fresh_database(postgres_url, "race") as url:
            stores = [ReadStore(url, writer=True) for _ in range(4)]
            try:
                assert await asyncio.gather(*(s.migrate() for s in stores)) == [1, 1, 1, 1]
            finally:
                for s in stores:
                    await s.close()
