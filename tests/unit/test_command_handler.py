"""The command handler's decisions per batch, with in-memory history and author directory."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from command_service.adapters import InMemoryAuthorDirectory, InMemoryPartitionHistory
from command_service.bootstrap import readiness
from command_service.handler import CommandHandler
from command_service.snapshots import encode_state
from shared.kafka.clients import partition_for_key
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord
from shared.kafka.topics import Topics
from shared.keystore import InMemoryKeyStore
from shared.messages import decode_event, encode_command, encode_event
from shared.messages.base import Command
from shared.messages.blog import (
    ERASURE_ISSUER,
    WORKFLOW_ISSUER,
    AssignReviewer,
    AuthorRegistered,
    CreatePost,
    EditPost,
    EraseSubject,
    PostCreated,
    PublishPost,
    RegisterAuthor,
    RenameAuthor,
    SendReviewReminder,
    SubjectErased,
    SubmitPostForReview,
)
from shared.messages.results import CommandOutcome
from shared.personal import open_value
from shared.settings import KafkaSettings

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TOPICS = Topics.from_settings(KafkaSettings())
PARTITIONS = 4


def key_in(partition: int, prefix: str = "post") -> str:
    return next(
        k
        for k in (f"{prefix}-{i}" for i in range(1000))
        if partition_for_key(k.encode(), PARTITIONS) == partition
    )


def command_record(
    command: Command,
    aggregate: str,
    *,
    offset: int = 0,
    partition: int = 0,
    command_id: uuid.UUID | None = None,
    expected_version: int | None = None,
    issued_by: str | None = None,
    actor: str | None = None,
    actor_roles: tuple[str, ...] | None = None,
) -> InboundRecord:
    message = encode_command(
        command,
        command_id=command_id or uuid.uuid4(),
        aggregate_id=aggregate,
        expected_version=expected_version,
        issued_by=issued_by,
        actor=actor,
        actor_roles=actor_roles,
    )
    return InboundRecord(
        TOPICS.commands, partition, offset, message.key, message.value, message.headers
    )


def handler(
    history: InMemoryPartitionHistory | None = None,
    keys: InMemoryKeyStore | None = None,
    authors: InMemoryAuthorDirectory | None = None,
) -> CommandHandler:
    return CommandHandler(
        topics=TOPICS,
        partitions=PARTITIONS,
        authors=authors or InMemoryAuthorDirectory({"ada"}),
        history=history or InMemoryPartitionHistory(),
        keys=keys or InMemoryKeyStore(),
        clock=lambda: NOW,
    )


async def run_batch(
    h: CommandHandler, partition: int, records: list[InboundRecord]
) -> tuple[list[OutboundRecord], list[CommandOutcome]]:
    outputs = list(await h.handle(partition, records))
    delivered = [Delivered(o, partition, 100 + i) for i, o in enumerate(outputs)]
    results: Sequence[OutboundRecord] = await h.after_send(partition, delivered)
    return outputs, [CommandOutcome.decode(r.value) for r in results]


async def test_an_accepted_command_yields_its_event_and_an_outcome_with_the_event_offset() -> None:
    """Given an empty partition, when CreatePost, then one event on the same partition number
    of the events topic and an outcome naming that event's offset."""
    h = handler()
    await h.on_assigned(1)
    post = key_in(1)
    outputs, outcomes = await run_batch(
        h, 1, [command_record(CreatePost(author_id="ada", title="T"), post, offset=0, partition=1)]
    )
    assert [(o.topic, o.partition) for o in outputs] == [(TOPICS.events, 1)]
    event = decode_event(outputs[0].value)
    assert (event.envelope.aggregate_id, event.envelope.aggregate_version) == (post, 1)
    assert event.envelope.occurred_at == NOW
    [outcome] = outcomes
    assert outcome.status == "accepted" and outcome.version == 1
    assert [(e.partition, e.offset, e.type) for e in outcome.events] == [(1, 100, "PostCreated")]


async def test_the_same_command_id_twice_in_one_batch_appends_once() -> None:
    """Given one batch holding a command and its retry, then one event and a duplicate
    outcome equal to the first."""
    h = handler()
    await h.on_assigned(0)
    post = key_in(0)
    cid = uuid.uuid4()
    create = CreatePost(author_id="ada", title="T")
    outputs, outcomes = await run_batch(
        h,
        0,
        [
            command_record(create, post, offset=0, partition=0, command_id=cid),
            command_record(create, post, offset=1, partition=0, command_id=cid),
        ],
    )
    assert len(outputs) == 1
    assert [o.duplicate for o in outcomes] == [False, True]
    assert outcomes[0].events == outcomes[1].events


async def test_a_command_in_the_wrong_partition_is_moved_to_the_owning_one() -> None:
    """A command whose key belongs to partition 2 but arrived on 0 is re-produced to 2, with
    no decision and no outcome here."""
    h = handler()
    await h.on_assigned(0)
    post = key_in(2)
    outputs, outcomes = await run_batch(
        h, 0, [command_record(CreatePost(author_id="ada", title="T"), post, offset=5, partition=0)]
    )
    assert outcomes == []
    [moved] = outputs
    assert (moved.topic, moved.partition, moved.key) == (TOPICS.commands, 2, post.encode())
    assert ("rerouted-from", b"0") in moved.headers


async def test_a_bad_record_with_a_readable_command_id_is_dead_lettered_and_answered() -> None:
    """Unknown type: a DLQ copy with the code, and a rejected outcome for the sender."""
    h = handler()
    await h.on_assigned(0)
    cid = uuid.uuid4()
    post = key_in(0)
    value = json.dumps({"type": "Nope", "command_id": str(cid), "aggregate_id": post}).encode()
    bad = InboundRecord(TOPICS.commands, 0, 3, post.encode(), value)
    outputs, outcomes = await run_batch(h, 0, [bad])
    assert [o.topic for o in outputs] == [TOPICS.commands_dlq]
    assert dict(outputs[0].headers)["dlq.error.code"] == b"unknown_message_type"
    assert [(o.command_id, o.status, o.code) for o in outcomes] == [
        (cid, "rejected", "unknown_message_type")
    ]


async def test_restored_state_and_outcomes_drive_versions_and_idempotency() -> None:
    """Given a partition whose log holds a created post and an earlier outcome, a stale
    expected_version is a conflict at the restored version, and the earlier command id
    replays its outcome."""
    history = InMemoryPartitionHistory()
    post = key_in(3)
    old_cid = uuid.uuid4()
    event = encode_event(
        PostCreated(author_id="ada", title="T", body=""),
        event_id=uuid.uuid4(),
        aggregate_id=post,
        aggregate_version=1,
        occurred_at=NOW,
        command_id=old_cid,
    )
    history.events[3] = [InboundRecord(TOPICS.events, 3, 0, event.key, event.value)]
    previous = CommandOutcome(command_id=uuid.uuid4(), status="rejected", code="not_approved")
    history.outcomes[3] = [
        InboundRecord(TOPICS.command_results, 3, 0, None, previous.encode().value)
    ]
    h = handler(history)
    await h.on_assigned(3)
    outputs, outcomes = await run_batch(
        h,
        3,
        [
            command_record(PublishPost(), post, offset=9, partition=3, expected_version=0),
            command_record(
                PublishPost(), post, offset=10, partition=3, command_id=previous.command_id
            ),
            command_record(
                CreatePost(author_id="ada", title="T"),
                post,
                offset=11,
                partition=3,
                command_id=old_cid,
            ),
        ],
    )
    assert outputs == []
    assert (outcomes[0].code, outcomes[0].details["current_version"]) == ("version_conflict", 1)
    assert (outcomes[1].code, outcomes[1].duplicate) == ("not_approved", True)
    assert (outcomes[2].status, outcomes[2].duplicate, outcomes[2].version) == ("accepted", True, 1)


async def test_an_author_in_the_same_partition_counts_before_the_directory_knows_it() -> None:
    """A registration earlier in the same transaction makes the author known to CreatePost
    (both commit or abort together); the directory is asked only on a miss."""
    directory = InMemoryAuthorDirectory()
    h = handler(authors=directory)
    await h.on_assigned(0)
    author, post = key_in(0, "author"), key_in(0, "post")
    _, outcomes = await run_batch(
        h,
        0,
        [
            command_record(RegisterAuthor(name="N", email="n@x.y"), author, offset=0, partition=0),
            command_record(CreatePost(author_id=author, title="T"), post, offset=1, partition=0),
            command_record(
                CreatePost(author_id="ghost", title="T"), key_in(0, "p2"), offset=2, partition=0
            ),
        ],
    )
    assert [o.status for o in outcomes] == ["accepted", "accepted", "rejected"]
    assert outcomes[2].code == "author_not_found"
    assert directory.refreshes == 1


async def test_a_command_with_a_naive_occurred_at_is_decided_normally() -> None:
    """Other clients may send `occurred_at` without a timezone; it must not make the command
    look like poison (the queue-time metric skips it)."""
    h = handler()
    await h.on_assigned(0)
    post = key_in(0)
    value = json.dumps(
        {
            "type": "CreatePost",
            "command_id": str(uuid.uuid4()),
            "aggregate_id": post,
            "occurred_at": "2026-11-27T10:00:00",
            "payload": {"author_id": "ada", "title": "T"},
        }
    ).encode()
    _, outcomes = await run_batch(
        h, 0, [InboundRecord(TOPICS.commands, 0, 0, post.encode(), value)]
    )
    assert [o.status for o in outcomes] == ["accepted"]


# -- snapshots ---------------------------------------------------------------------------------


class Log:
    """What a run wrote to 'Kafka', fed back into an in-memory history for the next restore."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.history = InMemoryPartitionHistory()
        self.history.events[partition] = []
        self.history.snapshot_records[partition] = {}
        self.offset = 0

    async def run(self, h: CommandHandler, commands: list[InboundRecord]) -> list[OutboundRecord]:
        p = self.partition
        outputs = list(await h.handle(p, commands))
        delivered = []
        for o in outputs:
            delivered.append(Delivered(o, p, self.offset))
            if o.topic == TOPICS.events:
                self.history.events[p].append(
                    InboundRecord(TOPICS.events, p, self.offset, o.key, o.value)
                )
            self.offset += 1
        more = list(await h.after_send(p, delivered))
        for o in more:
            if o.topic == TOPICS.snapshots and o.key is not None:
                self.history.snapshot_records[p][o.key] = o.value
        self.offset += 1  # the commit marker
        return more


def snapshotting(
    history: InMemoryPartitionHistory, every: int, per_txn: int = 100
) -> CommandHandler:
    return CommandHandler(
        topics=TOPICS,
        partitions=PARTITIONS,
        authors=InMemoryAuthorDirectory({"ada"}),
        history=history,
        keys=InMemoryKeyStore(),
        clock=lambda: NOW,
        snapshot_every=every,
        snapshots_per_transaction=per_txn,
    )


def edits(posts: list[str], partition: int, rounds: int) -> list[InboundRecord]:
    out = [
        command_record(CreatePost(author_id="ada", title="T0"), p, offset=i, partition=partition)
        for i, p in enumerate(posts)
    ]
    for r in range(1, rounds + 1):
        out += [
            command_record(EditPost(title=f"T{r}"), p, offset=len(out) + i, partition=partition)
            for i, p in enumerate(posts)
        ]
    return out


async def test_a_checkpoint_is_written_after_enough_events_and_restore_replays_only_the_tail() -> (
    None
):
    """Given snapshot_every=10, when 12 events were appended, then the next transaction holds
    a snapshot of each changed aggregate and a checkpoint; a restore reads them and replays
    only the events after the checkpoint, to the same states."""
    posts = [p for p in (f"post-{i}" for i in range(200)) if partition_for_key(p.encode(), 4) == 2][
        :4
    ]
    log_ = Log(2)
    h = snapshotting(log_.history, every=10)
    await h.on_assigned(2)
    first = edits(posts, 2, rounds=2)  # 12 events
    written = await log_.run(h, first)
    keys = [o.key for o in written if o.topic == TOPICS.snapshots]
    assert sorted(keys) == sorted([p.encode() for p in posts] + [b"__checkpoint__"])
    checkpoint_at = log_.offset - 1
    more = [command_record(EditPost(title="T9"), posts[0], offset=100, partition=2)]
    assert [o.topic for o in await log_.run(h, more)] == [TOPICS.command_results]

    restored = snapshotting(log_.history, every=10)
    await restored.on_assigned(2)
    book = restored.books[2]
    assert book.from_snapshots == 4
    assert book.events_applied == 1  # only the edit after the checkpoint was replayed
    assert book.aggregates == h.books[2].aggregates
    full = handler(log_.history)  # snapshots off: full replay
    await full.on_assigned(2)
    assert full.books[2].events_applied == 13
    assert full.books[2].aggregates == book.aggregates
    assert checkpoint_at > 0


async def test_snapshots_written_after_the_checkpoint_are_not_applied_twice() -> None:
    """With at most 2 snapshots per transaction, a checkpoint needs several transactions; a
    crash in between leaves snapshots newer than the last checkpoint, which the restore
    recognises by version (events they already hold are skipped)."""
    posts = [p for p in (f"post-{i}" for i in range(300)) if partition_for_key(p.encode(), 4) == 1][
        :5
    ]
    log_ = Log(1)
    h = snapshotting(log_.history, every=3, per_txn=2)
    await h.on_assigned(1)
    await log_.run(h, edits(posts, 1, rounds=1))  # 10 events: 2 snapshots, no checkpoint yet
    assert b"__checkpoint__" not in log_.history.snapshot_records[1]
    for _ in range(3):  # more transactions: the remaining snapshots, then the checkpoint
        await log_.run(
            h, [command_record(EditPost(title=f"X{_}"), posts[0], offset=900 + _, partition=1)]
        )
    assert b"__checkpoint__" in log_.history.snapshot_records[1]
    await log_.run(h, [command_record(EditPost(title="Y"), posts[1], offset=999, partition=1)])
    restored = snapshotting(log_.history, every=3, per_txn=2)
    await restored.on_assigned(1)
    assert restored.books[1].aggregates == h.books[1].aggregates


async def test_an_unreadable_snapshot_falls_back_to_a_full_replay() -> None:
    posts = [p for p in (f"post-{i}" for i in range(300)) if partition_for_key(p.encode(), 4) == 0][
        :3
    ]
    log_ = Log(0)
    h = snapshotting(log_.history, every=2)
    await h.on_assigned(0)
    await log_.run(h, edits(posts, 0, rounds=1))
    assert b"__checkpoint__" in log_.history.snapshot_records[0]
    log_.history.snapshot_records[0][posts[0].encode()] = json.dumps(
        {"snapshot_schema": 99, "state": {}}
    ).encode()
    restored = snapshotting(log_.history, every=2)
    await restored.on_assigned(0)
    assert restored.books[0].from_snapshots == 0
    assert restored.books[0].events_applied == 6
    assert restored.books[0].aggregates == h.books[0].aggregates


# -- readiness ---------------------------------------------------------------------------------


async def test_health_says_restoring_while_a_partition_is_restored() -> None:
    """/health reports the owned and restoring partitions, and is not ready while restoring."""

    async def kafka_ok() -> dict[str, object]:
        return {"status": "ok", "kafka": "reachable"}

    busy: set[int] = {2}
    check = readiness(kafka_ok, lambda: {0, 1}, lambda: busy)
    report = await check()
    assert report["status"] == "restoring"
    assert report["partitions"] == {"owned": [0, 1], "restoring": [2]}
    busy.clear()
    assert (await check())["status"] == "ok"


async def test_the_handler_marks_a_partition_restoring_only_during_its_restore() -> None:
    seen: list[set[int]] = []

    class Watching(InMemoryPartitionHistory):
        async def replay(self, partition: int, on_events: Any, on_outcomes: Any, **kw: Any) -> int:
            seen.append(set(h.restoring))
            return await super().replay(partition, on_events, on_outcomes, **kw)

    h = handler(Watching())
    await h.on_assigned(1)
    assert seen == [{1}]
    assert h.restoring == set()


# -- personal data -----------------------------------------------------------------------------


async def test_personal_fields_leave_the_handler_sealed_and_decisions_still_compare_them() -> None:
    """RegisterAuthor's name and email are sealed in the event (no plaintext on the topic nor
    in snapshots); a rename to the same name is still recognised (the handler opens the state
    for the decision) and a real rename is sealed too."""
    keys = InMemoryKeyStore()
    h = handler(keys=keys)
    await h.on_assigned(0)
    author = key_in(0, "author")
    register = RegisterAuthor(name="Ada Lovelace", email="ada@example.org")
    outputs, outcomes = await run_batch(
        h, 0, [command_record(register, author, offset=0, partition=0)]
    )
    assert outcomes[0].status == "accepted"
    (event,) = [o for o in outputs if o.topic == TOPICS.events]
    assert b"Ada Lovelace" not in event.value and b"ada@example.org" not in event.value
    payload = decode_event(event.value).payload
    assert isinstance(payload, AuthorRegistered)
    opened = await keys.keys([author])
    assert open_value(payload.name, opened) == "Ada Lovelace"
    assert open_value(payload.email, opened) == "ada@example.org"
    assert "Ada" not in encode_state(h.books[0].aggregates[author]).decode()

    same = command_record(RenameAuthor(name="Ada Lovelace"), author, offset=1, partition=0)
    _, outcomes = await run_batch(h, 0, [same])
    assert (outcomes[0].status, outcomes[0].code) == ("rejected", "nothing_to_change")
    other = command_record(RenameAuthor(name="Ada King"), author, offset=2, partition=0)
    outputs, outcomes = await run_batch(h, 0, [other])
    assert outcomes[0].status == "accepted"
    assert b"Ada King" not in outputs[0].value


async def test_once_the_key_is_deleted_renames_are_refused_and_erasure_is_recorded() -> None:
    """The erasure deletes the key first, then sends EraseSubject: in between, a rename is
    refused (subject_erased) instead of sealing new data with a new key; EraseSubject appends
    SubjectErased; afterwards the author refuses personal data for good."""
    keys = InMemoryKeyStore()
    h = handler(keys=keys)
    await h.on_assigned(0)
    author = key_in(0, "author")
    register = RegisterAuthor(name="Ada", email="ada@example.org")
    await run_batch(h, 0, [command_record(register, author, offset=0, partition=0)])
    await keys.erase(author)
    rename = command_record(RenameAuthor(name="Ada K"), author, offset=1, partition=0)
    _, outcomes = await run_batch(h, 0, [rename])
    assert (outcomes[0].status, outcomes[0].code) == ("rejected", "subject_erased")
    erase = command_record(
        EraseSubject(reason="asked"), author, offset=2, partition=0, issued_by=ERASURE_ISSUER
    )
    outputs, outcomes = await run_batch(h, 0, [erase])
    assert outcomes[0].status == "accepted" and outcomes[0].version == 2
    assert isinstance(decode_event(outputs[0].value).payload, SubjectErased)
    again = command_record(RenameAuthor(name="Ada K"), author, offset=3, partition=0)
    _, outcomes = await run_batch(h, 0, [again])
    assert outcomes[0].code == "subject_erased"
    twice = command_record(EraseSubject(), author, offset=4, partition=0, issued_by=ERASURE_ISSUER)
    _, outcomes = await run_batch(h, 0, [twice])
    assert outcomes[0].code == "already_erased"


@pytest.mark.parametrize(
    ("command", "issued_by"),
    [
        (EraseSubject(reason="by hand"), None),
        (EraseSubject(), WORKFLOW_ISSUER),  # another part of the system is no erasure either
        (AssignReviewer(reviewer="mallory"), None),
        (AssignReviewer(reviewer="mallory"), "someone"),
        (SendReviewReminder(), None),
    ],
)
async def test_commands_only_the_system_issues_are_refused_from_anyone_else(
    command: Command, issued_by: str | None
) -> None:
    """EraseSubject, AssignReviewer and SendReviewReminder from a client (no or another
    `issued_by`) are rejected with `system_command`, a sentence saying what to do instead, and
    append nothing; the system's own issuers are served as before."""
    keys = InMemoryKeyStore()
    h = handler(keys=keys)
    await h.on_assigned(0)
    author, post = key_in(0, "author"), key_in(0, "post")
    setup = [
        command_record(
            RegisterAuthor(name="Ada", email="ada@example.org"), author, offset=0, partition=0
        ),
        command_record(CreatePost(author_id=author, title="T"), post, offset=1, partition=0),
        command_record(SubmitPostForReview(), post, offset=2, partition=0),
    ]
    if isinstance(command, SendReviewReminder):  # a reminder goes to an assigned reviewer
        assign = AssignReviewer(reviewer="bob")
        setup.append(command_record(assign, post, offset=3, partition=0, issued_by=WORKFLOW_ISSUER))
    _, outcomes = await run_batch(h, 0, setup)
    assert {o.status for o in outcomes} == {"accepted"}
    target = author if isinstance(command, EraseSubject) else post
    record = command_record(command, target, offset=5, partition=0, issued_by=issued_by)
    outputs, outcomes = await run_batch(h, 0, [record])
    assert (outcomes[0].status, outcomes[0].code) == ("rejected", "system_command")
    assert "instead" not in outcomes[0].message  # the sentence itself, not the attribute name
    assert type(command).instead in outcomes[0].message
    assert [o for o in outputs if o.topic == TOPICS.events] == []
    rightful = ERASURE_ISSUER if isinstance(command, EraseSubject) else WORKFLOW_ISSUER
    again = command_record(command, target, offset=6, partition=0, issued_by=rightful)
    _, outcomes = await run_batch(h, 0, [again])
    assert outcomes[0].status == "accepted", outcomes[0]


class CountingKeys(InMemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def key_for(self, subject: str) -> bytes:
        self.calls["key_for"] += 1
        return await super().key_for(subject)

    async def keys_for(self, subjects: Iterable[str]) -> dict[str, bytes]:
        self.calls["keys_for"] += 1
        return await super().keys_for(subjects)


async def test_a_batch_of_registrations_fetches_its_keys_in_one_round_trip() -> None:
    """50 registrations (and an erased subject among them) in one batch: one keys_for call,
    no key_for per command; every event sealed with its own subject's key; the erased one is
    refused."""
    keys = CountingKeys()
    h = handler(keys=keys)
    await h.on_assigned(0)
    candidates = (f"author-{i}" for i in range(400))
    authors = [a for a in candidates if partition_for_key(a.encode(), PARTITIONS) == 0][:50]
    await keys.erase(authors[0])
    batch = [
        command_record(RegisterAuthor(name=f"N {a}", email=f"{a}@x.org"), a, offset=i, partition=0)
        for i, a in enumerate(authors)
    ]
    keys.calls.clear()
    outputs, outcomes = await run_batch(h, 0, batch)
    assert keys.calls == Counter({"keys_for": 1})
    assert outcomes[0].code == "subject_erased"
    assert [o.status for o in outcomes[1:]] == ["accepted"] * 49
    opened = await keys.keys(authors)
    for out in (o for o in outputs if o.topic == TOPICS.events):
        decoded = decode_event(out.value)
        payload = decoded.payload
        assert isinstance(payload, AuthorRegistered)
        subject = decoded.envelope.aggregate_id
        assert open_value(payload.name, opened) == f"N {subject}"


async def test_every_event_records_the_actor_of_its_command() -> None:
    """Given a command naming its actor, then each of its events names that actor, beside the
    command and correlation ids; a command naming none (a trusted producer) gives events
    without one."""
    h = handler()
    await h.on_assigned(0)
    post, other = key_in(0), key_in(0, "other")
    outputs, outcomes = await run_batch(
        h,
        0,
        [
            command_record(
                CreatePost(author_id="ada", title="T"), post, actor="ada", actor_roles=("author",)
            ),
            command_record(CreatePost(author_id="ada", title="T"), other, offset=1),
        ],
    )
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    mine, trusted = (decode_event(o.value).envelope for o in outputs)
    assert (mine.actor, mine.command_id) == ("ada", outcomes[0].command_id)
    assert mine.correlation_id == str(outcomes[0].command_id)
    assert trusted.actor is None


async def test_a_command_for_a_post_of_another_author_is_rejected_with_not_owner() -> None:
    """Given ada's post, when bob (an author) edits it, then not_owner and no event; when an
    editor does, the edit is accepted and records the editor as its actor."""
    h = handler()
    await h.on_assigned(0)
    post = key_in(0)
    await run_batch(
        h, 0, [command_record(CreatePost(author_id="ada", title="T"), post, actor="ada")]
    )
    edit = EditPost(title="Changed")
    outputs, outcomes = await run_batch(
        h,
        0,
        [
            command_record(edit, post, offset=1, actor="bob", actor_roles=("author",)),
            command_record(edit, post, offset=2, actor="ed", actor_roles=("editor",)),
        ],
    )
    assert [(o.status, o.code) for o in outcomes] == [("rejected", "not_owner"), ("accepted", None)]
    [event] = outputs
    assert decode_event(event.value).envelope.actor == "ed"
