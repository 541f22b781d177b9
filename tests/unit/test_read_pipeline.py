"""The one read pipeline (shared/readmodel/pipeline.py): records and stored rows to readable
events, personal fields opened or shown as erased, views folded; an unreadable record in place
of one that does not decode."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.kafka.records import InboundRecord
from shared.keystore import InMemoryKeyStore
from shared.messages import encode_event
from shared.messages.base import Event
from shared.messages.blog import (
    AuthorRegistered,
    PostApproved,
    PostCreated,
    PostPublished,
    PostSubmittedForReview,
    SubjectErased,
)
from shared.personal import seal
from shared.readmodel.pipeline import (
    IndexedEvent,
    Unreadable,
    event_of_row,
    open_author,
    open_rows,
    read_record,
    read_records,
    upcast_row,
)
from shared.readmodel.views import apply_author, apply_post, fold, fold_batch

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "events"
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def record(value: bytes | None, offset: int = 0, partition: int = 3) -> InboundRecord:
    return InboundRecord("posts.events", partition, offset, b"post-1", value)


def event_record(
    payload: Event, version: int, *, aggregate: str = "post-1", offset: int = 0
) -> InboundRecord:
    encoded = encode_event(
        payload,
        event_id=uuid.uuid4(),
        aggregate_id=aggregate,
        aggregate_version=version,
        occurred_at=T0 + timedelta(minutes=version),
    )
    return record(encoded.value, offset)


def corpus_record(name: str, offset: int = 0) -> InboundRecord:
    sample = json.loads((CORPUS / f"{name}.json").read_text())
    return record(json.dumps(sample["record"]).encode(), offset)


def stored_row(
    event: IndexedEvent, *, schema_version: int, payload: dict[str, Any]
) -> dict[str, Any]:
    """A row of the read store's event index, as `ReadStore.events` reads it."""
    return {
        "log_partition": event.partition,
        "log_offset": event.offset,
        "event_id": str(event.envelope.event_id),
        "aggregate_id": event.envelope.aggregate_id,
        "aggregate_version": event.envelope.aggregate_version,
        "type": event.envelope.type,
        "occurred_at": event.envelope.occurred_at,
        "command_id": None,
        "schema_version": schema_version,
        "payload": payload,
    }


CREATED = PostCreated(author_id="ada", title="On engines", body="Notes.", tags=["history"])


def test_a_record_of_an_event_reads_as_that_event_at_its_log_position() -> None:
    """A readable record becomes an IndexedEvent with its envelope, payload and position."""
    read = read_record(event_record(CREATED, 1, offset=41))
    assert isinstance(read, IndexedEvent)
    assert (read.partition, read.offset) == (3, 41)
    assert read.envelope.aggregate_id == "post-1" and read.envelope.aggregate_version == 1
    assert read.payload == CREATED


def test_a_record_of_an_old_schema_version_reads_upcast_to_the_current_model() -> None:
    """PostApproved v1 (`reviewer`) reads as the current v2 model (`approved_by`)."""
    read = read_record(corpus_record("PostApproved.v1"))
    assert isinstance(read, IndexedEvent)
    assert isinstance(read.payload, PostApproved)
    assert read.payload.approved_by == "bob"


def test_undecodable_bytes_read_as_unreadable_with_position_code_and_reason() -> None:
    """Bytes that are not JSON yield an Unreadable that keeps the record and says why."""
    bad = record(b"\xffnot json", offset=7)
    read = read_record(bad)
    assert isinstance(read, Unreadable)
    assert (read.partition, read.offset, read.record) == (3, 7, bad)
    assert read.code == "malformed_record"
    assert "not JSON" in read.reason


def test_a_record_newer_than_the_code_is_unreadable_with_the_reason() -> None:
    """A schema version above the current one yields Unreadable `unsupported_schema_version`."""
    sample = json.loads((CORPUS / "PostApproved.v2.json").read_text())["record"]
    read = read_record(record(json.dumps(sample | {"schema_version": 3}).encode()))
    assert isinstance(read, Unreadable)
    assert read.code == "unsupported_schema_version"
    assert "newer than the supported 2" in read.reason


def test_an_unreadable_record_never_stops_the_records_after_it() -> None:
    """read_records keeps the readable events in log order around an unreadable one."""
    records = [
        event_record(CREATED, 1, offset=0),
        record(b"[]", offset=2),
        event_record(PostSubmittedForReview(), 2, offset=4),
        record(None, offset=6),
    ]
    events, unreadable = read_records(records)
    assert [e.offset for e in events] == [0, 4]
    assert [(u.offset, u.code) for u in unreadable] == [
        (2, "malformed_record"),
        (6, "malformed_record"),
    ]


def test_a_stored_row_of_an_old_schema_version_is_upcast_when_read_back() -> None:
    """A row written by older code (PostApproved v1) reads with the v2 payload and version."""
    read = read_record(corpus_record("PostApproved.v1"))
    assert isinstance(read, IndexedEvent)
    row = upcast_row(stored_row(read, schema_version=1, payload={"reviewer": "bob"}))
    assert row["schema_version"] == 2
    assert row["payload"] == {"approved_by": "bob"}
    assert event_of_row(row).payload == PostApproved(approved_by="bob")


def test_a_stored_row_reads_back_as_the_event_it_was_stored_from() -> None:
    """event_of_row rebuilds the envelope, payload and log position of a current row."""
    read = read_record(event_record(CREATED, 1, offset=12))
    assert isinstance(read, IndexedEvent)
    row = stored_row(read, schema_version=1, payload=CREATED.model_dump(mode="json"))
    again = event_of_row(upcast_row(row))
    assert again.payload == CREATED
    assert again.envelope.event_id == read.envelope.event_id
    assert (again.partition, again.offset) == (3, 12)


async def test_a_sealed_personal_field_opens_with_its_key_and_reads_as_erased_without() -> None:
    """The streams path: sealed values open while the subject has a key; after erasure they
    read as None and are listed in the row's erased_fields."""
    keys = InMemoryKeyStore()
    sealed = seal("Ada Lovelace", "ada", await keys.key_for("ada"))
    payload = {"name": sealed, "email": seal("ada@example.org", "ada", await keys.key_for("ada"))}

    opened = await open_rows([{"payload": dict(payload)}], keys)
    assert opened[0]["payload"] == {"name": "Ada Lovelace", "email": "ada@example.org"}
    assert opened[0]["erased_fields"] == []

    await keys.erase("ada")
    gone = await open_rows([{"payload": dict(payload)}], keys)
    assert gone[0]["payload"] == {"name": None, "email": None}
    assert gone[0]["erased_fields"] == ["name", "email"]


async def test_an_author_view_opens_with_its_key_and_reads_as_erased_without() -> None:
    """The author view: name and email opened with the key; with no key, None and erased."""
    keys = InMemoryKeyStore()
    key = await keys.key_for("ada")
    registered = read_record(
        event_record(
            AuthorRegistered(name=seal("Ada", "ada", key), email=seal("a@x.org", "ada", key)),
            1,
            aggregate="ada",
        )
    )
    assert isinstance(registered, IndexedEvent)
    view = fold([registered], apply_author)
    assert view is not None and view["name"].startswith("pii:v1:ada:")  # stored sealed

    opened = await open_author(view, keys)
    assert (opened["name"], opened["email"], opened["erased"]) == ("Ada", "a@x.org", False)

    await keys.erase("ada")
    erased = await open_author(view, keys)
    assert (erased["name"], erased["email"]) == (None, None)
    assert erased["erased"] is True and erased["erased_fields"] == ["name", "email"]

    subject_erased = read_record(event_record(SubjectErased(), 2, aggregate="ada"))
    assert isinstance(subject_erased, IndexedEvent)
    after = fold([registered, subject_erased], apply_author)
    assert after is not None and after["erased_at"] is not None
    shown = await open_author(after, keys)
    assert (shown["name"], shown["email"], shown["erased"]) == (None, None, True)
    assert shown["erased_fields"] == ["name", "email"]


def test_fold_gives_the_view_after_the_events_and_none_for_another_kind() -> None:
    """A post's events fold into its view; author events under a post's fold give None."""
    events, _ = read_records(
        [
            event_record(CREATED, 1, offset=0),
            corpus_record("PostApproved.v1", offset=2),
            event_record(PostPublished(), 3, offset=4),
        ]
    )
    view = fold(events, apply_post)
    assert view is not None
    assert (view["status"], view["version"], view["title"]) == ("published", 3, "On engines")
    assert view["published_at"] == T0 + timedelta(minutes=3)
    assert fold([], apply_post) is None
    assert fold(events, apply_author) is None


def test_fold_batch_folds_posts_and_authors_over_the_views_before_the_batch() -> None:
    """A batch updates the views it touches from their stored state, each in log order."""
    events, _ = read_records(
        [
            event_record(PostSubmittedForReview(), 2, offset=0),
            event_record(AuthorRegistered(name="Bob", email="b@x.org"), 1, aggregate="bob"),
        ]
    )
    before = fold(read_records([event_record(CREATED, 1)])[0], apply_post)
    assert before is not None
    stored = {"post-1": before}
    posts, authors = fold_batch(stored, {}, events)
    assert posts["post-1"]["status"] == "in_review" and posts["post-1"]["version"] == 2
    assert authors["bob"]["name"] == "Bob"
    assert stored == {"post-1": before} and before["status"] == "draft"  # left as they were
