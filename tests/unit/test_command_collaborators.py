"""The command handler's collaborators, one rule each: reading command records, deduplication,
the issuer and author checks, sealing at the encode boundary, the snapshot policy, and the HTTP
status of each code at the edge."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

import pytest

from command_service.adapters import InMemoryAuthorDirectory, InMemoryPartitionHistory
from command_service.api import HTTP_STATUS, http_status
from command_service.authors import AuthorCheck, issuer_refusal
from command_service.book import PartitionBook
from command_service.dedup import BatchOutcomes, OutcomeBook
from command_service.domain import PostState, PostStatus
from command_service.encoder import EventEncoder
from command_service.records import RECORD_CODES, CommandRecords
from command_service.snapshot_policy import SnapshotPolicy
from command_service.snapshots import CHECKPOINT_KEY, encode_checkpoint, encode_state
from shared.errors import MalformedRecordError, MessageError
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord
from shared.keystore import InMemoryKeyStore, SubjectErasedError
from shared.messages import decode_event, encode_event
from shared.messages.base import CommandEnvelope, Event
from shared.messages.blog import (
    ERASURE_ISSUER,
    AuthorRegistered,
    CreatePost,
    EraseSubject,
    PostCreated,
    PostEdited,
)
from shared.messages.results import CommandOutcome, EventPosition
from shared.personal import is_sealed, open_value
from tests.unit.test_command_handler import NOW, PARTITIONS, TOPICS, command_record, key_in


def envelope(aggregate: str, command_id: uuid.UUID | None = None) -> CommandEnvelope:
    return CommandEnvelope(
        type="RegisterAuthor",
        command_id=command_id or uuid.uuid4(),
        aggregate_id=aggregate,
        payload={},
    )


# -- records: read, refuse, re-route -------------------------------------------------------

READER = CommandRecords(TOPICS, PARTITIONS, max_command_bytes=1024)


def test_a_record_over_the_size_limit_is_refused_with_record_too_large() -> None:
    """The size is checked before anything is parsed."""
    post = key_in(0)
    big = InboundRecord(TOPICS.commands, 0, 0, post.encode(), b"x" * 1025)
    with pytest.raises(MessageError) as raised:
        READER.read(big)
    assert raised.value.code == "record_too_large"


def test_a_record_whose_key_is_not_its_aggregate_id_is_refused_with_key_mismatch() -> None:
    """The key routes the record; a key naming another aggregate would split its history."""
    record = command_record(CreatePost(author_id="ada", title="T"), key_in(0))
    other = InboundRecord(record.topic, 0, 0, b"someone-else", record.value, record.headers)
    with pytest.raises(MessageError) as raised:
        READER.read(other)
    assert raised.value.code == "key_mismatch"


def test_a_refused_record_is_dead_lettered_and_answered_when_its_command_id_is_readable() -> None:
    """The sender of a bad record hears back (a rejected outcome) only when it named an id."""
    cid = uuid.uuid4()
    named = InboundRecord(
        TOPICS.commands, 0, 4, b"k", json.dumps({"command_id": str(cid)}).encode()
    )
    refused = READER.refuse(named, MalformedRecordError("no type"), NOW)
    assert refused.dead_letter.topic == TOPICS.commands_dlq
    assert refused.outcome is not None
    assert (refused.outcome.command_id, refused.outcome.code) == (cid, "malformed_record")
    anonymous = InboundRecord(TOPICS.commands, 0, 5, b"k", b"not json")
    assert READER.refuse(anonymous, MalformedRecordError("x"), NOW).outcome is None


def test_a_record_on_the_partition_owning_its_key_is_not_rerouted() -> None:
    """Only a record on another partition than its key's is moved (to that one)."""
    record = command_record(CreatePost(author_id="ada", title="T"), key_in(3), partition=3)
    assert READER.reroute(record, 3) is None
    moved = READER.reroute(record, 1)
    assert moved is not None and moved.partition == 3


# -- dedup ---------------------------------------------------------------------------------


def outcome(command_id: uuid.UUID, version: int = 1) -> CommandOutcome:
    return CommandOutcome(
        command_id=command_id, status="accepted", aggregate_id="post-1", version=version
    )


def test_the_outcome_book_forgets_its_oldest_outcome_beyond_its_limit() -> None:
    """Bounded memory: with a limit of 2, a third outcome pushes out the first."""
    book = OutcomeBook(limit=2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for cid in (first, second, third):
        book.remember(outcome(cid))
    assert book.previous(first) is None
    assert book.previous(second) is not None and book.previous(third) is not None


def test_events_of_one_command_in_the_log_restore_one_outcome_naming_them_all() -> None:
    """A command whose outcome was lost is still known from the command id of its events."""
    book = OutcomeBook(limit=10)
    cid = uuid.uuid4()
    for version, event in enumerate(
        [PostCreated(author_id="a", title="T", body=""), PostEdited()], 1
    ):
        message = encode_event(
            event,
            event_id=uuid.uuid4(),
            aggregate_id="post-1",
            aggregate_version=version,
            occurred_at=NOW,
            command_id=cid,
        )
        record = InboundRecord(TOPICS.events, 0, 10 + version, message.key, message.value)
        book.restore_event(decode_event(record.value).envelope, record)
    previous = book.previous(cid)
    assert previous is not None and previous.version == 2
    assert [e.offset for e in previous.events] == [11, 12]


def test_a_duplicate_outcome_on_the_results_topic_is_not_restored_as_a_decision() -> None:
    """Only first outcomes are remembered; a duplicate's copy is skipped, and so is garbage."""
    book = OutcomeBook(limit=10)
    dup = outcome(uuid.uuid4()).model_copy(update={"duplicate": True})
    book.restore_outcomes(
        [
            InboundRecord(TOPICS.command_results, 0, 0, None, dup.encode().value),
            InboundRecord(TOPICS.command_results, 0, 1, None, b"garbage"),
        ]
    )
    assert book.previous(dup.command_id) is None


def test_a_remembered_outcome_comes_back_equal_from_its_compact_form() -> None:
    """The book keeps outcomes as JSON (a fifth of the model's memory); what a repeat is
    answered with is the outcome as decided: rejection details, events and times included,
    whether remembered live or restored from the results topic."""
    rejected = CommandOutcome(
        command_id=uuid.uuid4(),
        status="rejected",
        command_type="EditPost",
        aggregate_id="post-1",
        version=4,
        code="version_conflict",
        message="expected version 2, the post is at 4",
        details={"expected": 2, "actual": 4},
        processed_at=NOW,
    )
    edited = EventPosition(type="PostEdited", aggregate_version=2, partition=0, offset=9)
    accepted = outcome(uuid.uuid4(), version=2).model_copy(
        update={"events": [edited], "processed_at": NOW}
    )
    live = OutcomeBook(limit=10)
    restored = OutcomeBook(limit=10)
    for o in (rejected, accepted):
        live.remember(o)
    restored.restore_outcomes(
        [
            InboundRecord(TOPICS.command_results, 0, n, None, o.encode().value)
            for n, o in enumerate((rejected, accepted))
        ]
    )
    for book in (live, restored):
        assert book.previous(rejected.command_id) == rejected
        assert book.previous(accepted.command_id) == accepted


def test_a_command_repeated_in_its_batch_gets_the_first_outcome_with_its_event_offsets() -> None:
    """The repeat is not decided again; after the send it answers as the first, duplicate."""
    book = OutcomeBook(limit=10)
    batch = BatchOutcomes(book)
    cid = uuid.uuid4()
    assert not batch.repeat(cid)
    event = OutboundRecord(TOPICS.events, b"{}", b"post-1", [("type", b"PostCreated")], 0)
    batch.decided(outcome(cid), first_output=0, event_count=1)
    assert batch.repeat(cid)
    first, again = batch.complete([Delivered(event, 0, 41)])
    assert [(e.type, e.offset) for e in first.events] == [("PostCreated", 41)]
    assert again.duplicate and again.events == first.events
    assert book.previous(cid) == first


def test_a_command_decided_in_an_earlier_batch_is_a_repeat_answered_as_duplicate() -> None:
    """The book's previous outcome is answered again, marked duplicate."""
    book = OutcomeBook(limit=10)
    cid = uuid.uuid4()
    book.remember(outcome(cid, version=3))
    batch = BatchOutcomes(book)
    assert batch.repeat(cid)
    [answer] = batch.complete([])
    assert (answer.duplicate, answer.version) == (True, 3)


# -- authors -------------------------------------------------------------------------------


def test_a_system_command_from_a_client_is_refused_and_from_its_issuer_is_not() -> None:
    """EraseSubject from no issuer: system_command; from the erasure itself: no refusal."""
    refusal = issuer_refusal(EraseSubject(), None)
    assert refusal is not None and refusal.code == "system_command"
    assert issuer_refusal(EraseSubject(), ERASURE_ISSUER) is None
    assert issuer_refusal(CreatePost(author_id="a", title="T"), None) is None


async def test_an_author_of_the_same_partition_is_known_without_asking_the_directory() -> None:
    """An author in the partition's own state exists even before the directory has read it."""
    directory = InMemoryAuthorDirectory()
    check = AuthorCheck(directory, wait_s=0.1)
    assert await check.exists("ada", {"ada"})
    assert directory.refreshes == 0


async def test_an_author_unknown_to_the_directory_is_looked_up_once_more_after_a_refresh() -> None:
    """A miss waits for the directory to catch up once, then answers what it knows."""
    directory = InMemoryAuthorDirectory({"ada"})
    check = AuthorCheck(directory, wait_s=0.1)
    assert await check.exists("ada", set())
    assert directory.refreshes == 0
    assert not await check.exists("ghost", set())
    assert directory.refreshes == 1


# -- encoder: sealing at the encode boundary -----------------------------------------------


class CountingKeys(InMemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def key_for(self, subject: str) -> bytes:
        self.asked.append(subject)
        return await super().key_for(subject)

    async def keys_for(self, subjects: Iterable[str]) -> dict[str, bytes]:
        self.asked.extend(sorted(subjects))
        return await super().keys_for(subjects)


async def test_personal_fields_are_sealed_in_the_record_and_in_the_event_as_written() -> None:
    """The record carries no plaintext; the written event (what the state folds) is sealed
    too, and opens to the plaintext with the subject's key."""
    keys = CountingKeys()
    encoder = EventEncoder(TOPICS.events, keys)
    register = AuthorRegistered(name="Ada Lovelace", email="ada@example.org")
    [written] = await encoder.encode(0, envelope("author-1"), [register], version=0, at=NOW)
    assert b"Ada Lovelace" not in written.record.value
    assert isinstance(written.event, AuthorRegistered) and is_sealed(written.event.name)
    assert open_value(written.event.name, await keys.keys(["author-1"])) == "Ada Lovelace"
    assert decode_event(written.record.value).payload == written.event


async def test_events_without_personal_fields_are_encoded_without_asking_for_a_key() -> None:
    """A post's events carry no personal data: no key-store round trip."""
    keys = CountingKeys()
    encoder = EventEncoder(TOPICS.events, keys)
    events: list[Event] = [PostCreated(author_id="a", title="T", body=""), PostEdited(title="U")]
    written = await encoder.encode(2, envelope("post-1"), events, version=4, at=NOW)
    assert keys.asked == []
    assert [decode_event(w.record.value).envelope.aggregate_version for w in written] == [5, 6]
    assert {w.record.partition for w in written} == {2}


async def test_the_same_command_encodes_to_the_same_event_ids() -> None:
    """Event ids derive from the command id: a batch retried after an abort writes the same."""
    encoder = EventEncoder(TOPICS.events, InMemoryKeyStore())
    env = envelope("post-1")
    event = PostCreated(author_id="a", title="T", body="")
    [one] = await encoder.encode(0, env, [event], version=0, at=NOW)
    [two] = await encoder.encode(0, env, [event], version=0, at=NOW)
    assert one.record.value == two.record.value


async def test_a_subject_prefetched_and_absent_is_erased_without_asking_the_store_again() -> None:
    """The batch's prefetch is the answer: a subject it lacks was erased."""
    keys = CountingKeys()
    a, b = key_in(0, "author"), key_in(0, "writer")
    await keys.erase(a)
    encoder = EventEncoder(TOPICS.events, keys)
    register = AuthorRegistered(name="N", email="n@x.y")
    records = [
        InboundRecord(TOPICS.commands, 0, i, s.encode(), b"{}", [("type", b"RegisterAuthor")])
        for i, s in enumerate((a, b))
    ]
    await encoder.prefetch(0, records)
    assert keys.asked == sorted([a, b])
    with pytest.raises(SubjectErasedError):
        await encoder.encode(0, envelope(a), [register], version=0, at=NOW)
    await encoder.encode(0, envelope(b), [register], version=0, at=NOW)
    assert keys.asked == sorted([a, b])  # no further round trip


# -- snapshot policy -----------------------------------------------------------------------


def post(aggregate: str, version: int = 1) -> PostState:
    return PostState(aggregate, version, "ada", "T", "", (), PostStatus.DRAFT, NOW, NOW)


def dirty_book(count: int, since_checkpoint: int) -> PartitionBook:
    book = PartitionBook(OutcomeBook(limit=10), log_end=77)
    for i in range(count):
        book.keep(f"post-{i}", post(f"post-{i}"), appended=0)
    book.since_checkpoint = since_checkpoint
    return book


def test_no_snapshot_is_written_before_every_events_were_appended() -> None:
    """Below the threshold a transaction carries no snapshot record."""
    policy = SnapshotPolicy(TOPICS.snapshots, lambda: NOW, every=5, per_transaction=10)
    assert policy.records(0, dirty_book(3, since_checkpoint=4)) == []


def test_snapshots_are_capped_per_transaction_and_the_checkpoint_comes_after_the_last() -> None:
    """3 changed aggregates, 2 per transaction: 2 snapshots, then 1 and the checkpoint."""
    policy = SnapshotPolicy(TOPICS.snapshots, lambda: NOW, every=5, per_transaction=2)
    book = dirty_book(3, since_checkpoint=5)
    first = policy.records(1, book)
    assert len(first) == 2 and CHECKPOINT_KEY not in [r.key for r in first]
    second = policy.records(1, book)
    assert [r.key for r in second][-1] == CHECKPOINT_KEY
    assert {r.partition for r in first + second} == {1}
    assert book.since_checkpoint == 0


async def test_snapshots_without_a_checkpoint_are_not_loaded() -> None:
    """Loose snapshots prove nothing: the restore replays from offset 0."""
    history = InMemoryPartitionHistory()
    history.snapshot_records[0] = {b"post-1": encode_state(post("post-1"))}
    policy = SnapshotPolicy(TOPICS.snapshots, lambda: NOW, every=5, per_transaction=2)
    book = PartitionBook(OutcomeBook(limit=10))
    assert await policy.load(history, 0, book) == 0
    assert book.aggregates == {}


async def test_a_checkpoint_loads_its_snapshots_and_names_the_offset_to_replay_from() -> None:
    """With a checkpoint, the states are taken and replay starts at its next offset."""
    history = InMemoryPartitionHistory()
    history.snapshot_records[0] = {
        b"post-1": encode_state(post("post-1", version=3)),
        CHECKPOINT_KEY: encode_checkpoint(42, 1, NOW),
    }
    policy = SnapshotPolicy(TOPICS.snapshots, lambda: NOW, every=5, per_transaction=2)
    book = PartitionBook(OutcomeBook(limit=10))
    assert await policy.load(history, 0, book) == 42
    assert book.aggregates == {"post-1": post("post-1", version=3)}
    assert book.from_snapshots == 1


# -- the book ------------------------------------------------------------------------------


def test_a_gap_in_an_aggregates_versions_is_refused_as_a_corrupt_log() -> None:
    """Version 2 without version 1 (and no snapshot): the restore stops, it does not guess."""
    message = encode_event(
        PostEdited(title="U"),
        event_id=uuid.uuid4(),
        aggregate_id="post-1",
        aggregate_version=2,
        occurred_at=NOW,
    )
    book = PartitionBook(OutcomeBook(limit=10))
    with pytest.raises(MalformedRecordError, match="expected 1"):
        book.fold_events([InboundRecord(TOPICS.events, 0, 0, message.key, message.value)])


# -- the HTTP edge's statuses --------------------------------------------------------------


def test_every_rejection_code_used_by_the_domain_has_an_http_status() -> None:
    """Codes map to 404/409/422/413; unknown codes default to 422."""
    assert http_status("post_not_found") == 404
    assert http_status("version_conflict") == 409
    assert http_status("title_too_long") == 422
    assert http_status("something_new") == 422
    assert set(HTTP_STATUS.values()) <= {403, 404, 409, 413, 422}


def test_a_command_record_that_cannot_be_read_is_answered_422_or_413_when_too_large() -> None:
    """The record-level codes, defined where records are read, have their status at the edge."""
    assert {code: http_status(code) for code in RECORD_CODES} == {
        "malformed_record": 422,
        "unknown_message_type": 422,
        "invalid_payload": 422,
        "unsupported_schema_version": 422,
        "missing_key": 422,
        "key_mismatch": 422,
        "record_too_large": 413,
    }
    assert http_status("system_command") == 403
