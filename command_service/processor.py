"""The command handler: the single writer of its partitions of the event log.

Runs inside the partition-owned transactional processor. For commands partition p it holds the
state of every aggregate of events partition p (same key, same partition count) and the
outcomes of the commands it processed, both restored from Kafka when p is assigned:

* events partition p  -> aggregate states (and the ids of commands that produced events),
* results partition p -> outcomes, including rejections (which left no event).

Per batch, in ONE transaction: events to events partition p, outcomes (with the events'
offsets) to results partition p, bad records to the dead-letter topic, misrouted commands to
their right partition, and the consumed offsets.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

from command_service.domain import (
    AggregateState,
    AuthorState,
    Decision,
    Rejection,
    decide,
    evolve,
)
from command_service.snapshots import (
    CHECKPOINT_KEY,
    UnreadableSnapshot,
    decode_checkpoint,
    decode_state,
    encode_checkpoint,
    encode_state,
)
from shared.errors import MalformedRecordError, MessageError
from shared.kafka.clients import partition_for_key
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord, dead_letter
from shared.kafka.topics import Topics
from shared.keystore import SubjectErasedError
from shared.logging import get_logger, message_context
from shared.messages.base import Command, Event
from shared.messages.blog import CreatePost, RenameAuthor
from shared.messages.codec import DecodedCommand, decode_command, decode_event, encode_event
from shared.messages.results import CommandOutcome, EventPosition
from shared.personal import open_value, personal_fields, seal_message

log = get_logger(__name__)

COMMANDS_TOTAL = Counter(
    "esctl_commands_total", "Commands processed, by outcome and code", ["status", "code"]
)
BATCH_SIZE = Histogram(
    "esctl_command_batch_size", "Commands per transaction", buckets=(1, 5, 20, 100, 500, 2000)
)
QUEUE_SECONDS = Histogram(
    "esctl_command_queue_seconds",
    "Time from a command's occurred_at (set by its sender) to its decision",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RESTORE_SECONDS = Histogram(
    "esctl_partition_restore_seconds", "Time to restore one partition's state"
)

#: commands whose events carry personal fields (their subjects' keys are fetched per batch)
_SEALING_COMMANDS = frozenset({"RegisterAuthor", "RenameAuthor"})

# Deterministic event ids: a batch retried after an abort produces byte-identical events.
EVENT_ID_NAMESPACE = uuid.UUID("5b0c2f5e-3a56-4a38-9f0c-7c3f3c7a2b11")


class AuthorDirectory(Protocol):
    """Which authors exist, across all partitions (committed registrations only)."""

    def known(self, author_id: str) -> bool: ...

    async def refresh(self, timeout_s: float) -> bool:
        """Wait until every registration committed before the call is known."""
        ...


class SubjectKeys(Protocol):
    """The per-subject keys personal fields are sealed with (shared.keystore.KeyStore)."""

    async def key_for(self, subject: str) -> bytes:
        """The subject's key, created on first use; SubjectErasedError once erased."""
        ...

    async def keys_for(self, subjects: Iterable[str]) -> dict[str, bytes]:
        """key_for of many at once (one round trip); erased subjects are absent."""
        ...

    async def keys(self, subjects: Iterable[str]) -> dict[str, bytes]: ...


class PartitionHistory(Protocol):
    """Where a partition's past comes from when it is assigned (the restore hook).

    The Kafka implementation reads the event log and the results topic; snapshots plug in here.
    """

    async def snapshots(self, partition: int) -> dict[bytes, bytes | None]:
        """The latest record per key of snapshots partition p."""
        ...

    async def replay(
        self,
        partition: int,
        on_events: Callable[[Sequence[InboundRecord]], None],
        on_outcomes: Callable[[Sequence[InboundRecord]], None],
        *,
        events_from: int = 0,
    ) -> int:
        """Events of partition p from `events_from`, then its outcomes; returns the events'
        end offset."""
        ...


@dataclass
class PartitionBook:
    """Everything the owner of one partition knows. Bounded where it could grow forever."""

    aggregates: dict[str, AggregateState] = field(default_factory=dict)
    outcomes: OrderedDict[uuid.UUID, CommandOutcome] = field(default_factory=OrderedDict)
    logged: OrderedDict[uuid.UUID, CommandOutcome] = field(default_factory=OrderedDict)
    events_applied: int = 0
    # snapshots (see command_service/snapshots.py)
    from_snapshots: int = 0  # aggregates restored from snapshots
    log_end: int = 0  # next offset of events partition p, as far as this owner knows
    since_checkpoint: int = 0  # events appended (or replayed) since the last checkpoint
    dirty: set[str] = field(default_factory=set)  # aggregates changed since it

    def remember(
        self, book: OrderedDict[uuid.UUID, CommandOutcome], outcome: CommandOutcome, limit: int
    ) -> None:
        book[outcome.command_id] = outcome
        book.move_to_end(outcome.command_id)
        if len(book) > limit:
            book.popitem(last=False)

    def previous(self, command_id: uuid.UUID) -> CommandOutcome | None:
        return self.outcomes.get(command_id) or self.logged.get(command_id)


@dataclass
class _Pending:
    """An outcome waiting for the offsets of its events (phase two of the transaction)."""

    outcome: CommandOutcome
    first_output: int = 0
    event_count: int = 0
    duplicate_of: uuid.UUID | None = None


class CommandHandler:
    """Decides commands of the partitions it is given; see the module docstring."""

    def __init__(
        self,
        *,
        topics: Topics,
        partitions: int,
        authors: AuthorDirectory,
        history: PartitionHistory,
        keys: SubjectKeys,
        clock: Callable[[], datetime],
        max_command_bytes: int = 512 * 1024,
        author_wait_s: float = 2.0,
        remembered_outcomes: int = 100_000,
        snapshot_every: int = 0,
        snapshots_per_transaction: int = 20_000,
    ) -> None:
        self.topics = topics
        self.partitions = partitions
        self.authors = authors
        self.history = history
        self.keys = keys
        self.clock = clock
        self.max_command_bytes = max_command_bytes
        self.author_wait_s = author_wait_s
        self.remembered = remembered_outcomes
        self.snapshot_every = snapshot_every
        self.snapshots_per_transaction = snapshots_per_transaction
        self.books: dict[int, PartitionBook] = {}
        self._pending: dict[int, list[_Pending]] = {}
        #: partitions being restored now (for readiness: /health answers 503 meanwhile)
        self.restoring: set[int] = set()
        # per partition: keys fetched for the batch being decided, and for which subjects
        # (see _prefetch_keys; partitions are decided concurrently)
        self._batch_keys: dict[int, tuple[dict[str, bytes], set[str]]] = {}

    # -- restore -----------------------------------------------------------------------------

    async def on_assigned(self, partition: int) -> None:
        self.restoring.add(partition)
        try:
            await self._restore(partition)
        finally:
            self.restoring.discard(partition)

    async def _restore(self, partition: int) -> None:
        book = PartitionBook()
        with RESTORE_SECONDS.time():
            start = 0
            if self.snapshot_every:
                start = await self._load_snapshots(partition, book)
            book.log_end = await self.history.replay(
                partition,
                lambda records: self._apply_events(book, records),
                lambda records: self._apply_outcomes(book, records),
                events_from=start,
            )
        # The replayed tail counts towards the next checkpoint: a long replay is written down.
        book.since_checkpoint = book.events_applied
        self.books[partition] = book
        log.info(
            "partition_restored",
            partition=partition,
            aggregates=len(book.aggregates),
            from_snapshots=book.from_snapshots,
            events_from=start,
            events=book.events_applied,
            outcomes=len(book.outcomes),
        )

    async def _load_snapshots(self, partition: int, book: PartitionBook) -> int:
        """Aggregates from the snapshots of partition p; the offset to replay events from."""
        latest = await self.history.snapshots(partition)
        checkpoint = latest.get(CHECKPOINT_KEY)
        if checkpoint is None:
            return 0  # no complete checkpoint yet: loose snapshots alone prove nothing
        try:
            start = decode_checkpoint(checkpoint)
            states = {
                key.decode(): decode_state(value)
                for key, value in latest.items()
                if key != CHECKPOINT_KEY and value is not None
            }
        except (UnreadableSnapshot, UnicodeDecodeError) as exc:
            log.warning("snapshots_unreadable_full_replay", partition=partition, error=str(exc))
            return 0
        book.aggregates.update(states)
        book.from_snapshots = len(states)
        return start

    async def on_revoked(self, partition: int) -> None:
        self.books.pop(partition, None)
        self._batch_keys.pop(partition, None)
        self._pending.pop(partition, None)

    def _apply_events(self, book: PartitionBook, records: Sequence[InboundRecord]) -> None:
        for record in records:
            decoded = decode_event(record.value)  # our own log: a failure here is corruption
            env = decoded.envelope
            state = book.aggregates.get(env.aggregate_id)
            expected = (state.version if state else 0) + 1
            if state is not None and env.aggregate_version < expected and book.from_snapshots:
                # a snapshot written after the checkpoint already holds this event
                continue
            if env.aggregate_version != expected:
                raise MalformedRecordError(
                    f"event log corrupt at {record.topic}[{record.partition}]@{record.offset}: "
                    f"{env.aggregate_id} version {env.aggregate_version}, expected {expected}"
                )
            book.aggregates[env.aggregate_id] = evolve(
                state, decoded.payload, aggregate_id=env.aggregate_id, at=env.occurred_at
            )
            book.events_applied += 1
            book.dirty.add(env.aggregate_id)
            if env.command_id is not None:
                previous = book.logged.get(env.command_id)
                position = EventPosition(
                    type=env.type,
                    aggregate_version=env.aggregate_version,
                    partition=record.partition,
                    offset=record.offset,
                )
                events = [*previous.events, position] if previous else [position]
                book.remember(
                    book.logged,
                    CommandOutcome(
                        command_id=env.command_id,
                        status="accepted",
                        aggregate_id=env.aggregate_id,
                        version=env.aggregate_version,
                        events=events,
                    ),
                    self.remembered,
                )

    def _apply_outcomes(self, book: PartitionBook, records: Sequence[InboundRecord]) -> None:
        for record in records:
            try:
                outcome = CommandOutcome.decode(record.value)
            except MessageError:
                continue
            if not outcome.duplicate:
                book.remember(book.outcomes, outcome, self.remembered)

    # -- decide ------------------------------------------------------------------------------

    async def handle(
        self, partition: int, records: Sequence[InboundRecord]
    ) -> Sequence[OutboundRecord]:
        book = self.books[partition]
        now = self.clock()
        await self._prefetch_keys(partition, records)
        outputs: list[OutboundRecord] = []
        pending: list[_Pending] = []
        in_batch: set[uuid.UUID] = set()
        BATCH_SIZE.observe(len(records))
        for record in records:
            try:
                command = self._read(record)
            except MessageError as exc:
                outputs.append(dead_letter(record, exc, self.topics.commands_dlq))
                command_id = _recover_command_id(record.value)
                if command_id is not None:
                    pending.append(
                        _Pending(
                            CommandOutcome(
                                command_id=command_id,
                                status="rejected",
                                code=exc.code,
                                message=exc.message,
                                processed_at=now,
                            )
                        )
                    )
                log.warning(
                    "command_record_rejected",
                    partition=partition,
                    offset=record.offset,
                    code=exc.code,
                    error=exc.message,
                )
                continue
            env = command.envelope
            right = partition_for_key(record.key or b"", self.partitions)
            if right != partition:
                # Produced with another partitioner (librdkafka's default is CRC32): move it to
                # the partition that owns the aggregate, inside this transaction.
                outputs.append(
                    OutboundRecord(
                        self.topics.commands,
                        record.value,
                        key=record.key,
                        partition=right,
                        headers=[*record.headers, ("rerouted-from", str(partition).encode())],
                    )
                )
                continue
            with message_context(correlation_id=env.correlation_id, message_id=str(env.command_id)):
                if env.command_id in in_batch:
                    pending.append(
                        _Pending(_placeholder(env.command_id), duplicate_of=env.command_id)
                    )
                    continue
                previous = book.previous(env.command_id)
                if previous is not None:
                    pending.append(_Pending(previous.model_copy(update={"duplicate": True})))
                    continue
                in_batch.add(env.command_id)
                pending.append(await self._decide(book, partition, command, now, outputs))
        self._pending[partition] = pending
        return outputs

    def _read(self, record: InboundRecord) -> DecodedCommand[Command]:
        size = len(record.value or b"")
        if size > self.max_command_bytes:
            raise MessageError(
                f"command record of {size} bytes exceeds the limit of {self.max_command_bytes}",
                code="record_too_large",
            )
        if not record.key:
            raise MessageError(
                "command record has no key; the key must be the aggregate id", code="missing_key"
            )
        command = decode_command(record.value)
        if record.key != command.envelope.aggregate_id.encode():
            raise MessageError(
                f"record key {record.key.decode(errors='replace')!r} differs from aggregate_id "
                f"{command.envelope.aggregate_id!r}; the key must be the aggregate id",
                code="key_mismatch",
            )
        return command

    async def _author_exists(self, book: PartitionBook, author_id: str) -> bool:
        # Same partition: its registration may even be in this very transaction, which then
        # commits or aborts with this decision. Other partitions: the committed directory,
        # refreshed once (read-your-writes for registrations accepted before this command).
        if author_id in book.aggregates or self.authors.known(author_id):
            return True
        await self.authors.refresh(self.author_wait_s)
        return self.authors.known(author_id)

    async def _decide(
        self,
        book: PartitionBook,
        partition: int,
        command: DecodedCommand[Command],
        now: datetime,
        outputs: list[OutboundRecord],
    ) -> _Pending:
        env, payload = command.envelope, command.payload
        # Only with a timezone: other clients may send naive times, which cannot be compared.
        if env.occurred_at is not None and env.occurred_at.tzinfo is not None:
            QUEUE_SECONDS.observe(max(0.0, (now - env.occurred_at).total_seconds()))
        state = book.aggregates.get(env.aggregate_id)
        author_exists = False
        decision: Decision | None = _issuer_refusal(payload, env.issued_by)
        if decision is None:
            if isinstance(payload, CreatePost):
                author_exists = await self._author_exists(book, payload.author_id)
            decision = decide(
                payload,
                await self._opened(partition, state)
                if isinstance(payload, RenameAuthor)
                else state,
                aggregate_id=env.aggregate_id,
                expected_version=env.expected_version,
                author_exists=author_exists,
            )
        current = state.version if state else 0
        base = {
            "command_id": env.command_id,
            "command_type": env.type,
            "aggregate_id": env.aggregate_id,
            "processed_at": now,
        }
        if not isinstance(decision, Rejection):
            decision = await self._sealed(partition, env.aggregate_id, decision)
        if isinstance(decision, Rejection):
            COMMANDS_TOTAL.labels("rejected", decision.code).inc()
            return _Pending(
                CommandOutcome(
                    **base,
                    status="rejected",
                    version=current,
                    code=decision.code,
                    message=decision.message,
                    details=decision.details,
                )
            )
        first = len(outputs)
        for i, event in enumerate(decision, start=1):
            version = current + i
            state = evolve(state, event, aggregate_id=env.aggregate_id, at=now)
            outputs.append(
                OutboundRecord.of(
                    self.topics.events,
                    encode_event(
                        event,
                        event_id=uuid.uuid5(EVENT_ID_NAMESPACE, f"{env.command_id}/{i}"),
                        aggregate_id=env.aggregate_id,
                        aggregate_version=version,
                        occurred_at=now,
                        command_id=env.command_id,
                        correlation_id=env.correlation_id or str(env.command_id),
                        causation_id=str(env.command_id),
                    ),
                    partition=partition,
                )
            )
        if state is not None:
            book.aggregates[env.aggregate_id] = state
            book.dirty.add(env.aggregate_id)
            book.since_checkpoint += len(decision)
        COMMANDS_TOTAL.labels("accepted", "").inc()
        return _Pending(
            CommandOutcome(**base, status="accepted", version=current + len(decision)),
            first_output=first,
            event_count=len(decision),
        )

    async def _prefetch_keys(self, partition: int, records: Sequence[InboundRecord]) -> None:
        """One key-store round trip for all the subjects of a batch's author commands (found
        by the `type` header: a hint only; records without it take the one-by-one path)."""
        subjects = {
            r.key.decode(errors="replace")
            for r in records
            if r.key and r.header("type") in _SEALING_COMMANDS
        }
        if len(subjects) < 2:  # nothing to gain
            self._batch_keys.pop(partition, None)
            return
        self._batch_keys[partition] = (await self.keys.keys_for(subjects), subjects)

    async def _key(self, partition: int, subject: str) -> bytes:
        """The subject's key: from the batch's prefetch, else from the key store."""
        keys, subjects = self._batch_keys.get(partition, ({}, set()))
        key = keys.get(subject)
        if key is not None:
            return key
        if subject in subjects:  # prefetched and absent: erased
            raise SubjectErasedError(subject)
        return await self.keys.key_for(subject)

    async def _opened(self, partition: int, state: AggregateState | None) -> AggregateState | None:
        """An author's state with its personal fields opened, for decisions that compare them
        (a rename to the same name); marked erased when its key is gone."""
        if not isinstance(state, AuthorState) or state.erased:
            return state
        key = self._batch_keys.get(partition, ({}, set()))[0].get(state.id)
        keys = {state.id: key} if key is not None else await self.keys.keys([state.id])
        name, email = open_value(state.name, keys), open_value(state.email, keys)
        if name is None or email is None:
            return replace(state, erased=True)  # key deleted, SubjectErased not here yet
        return replace(state, name=name, email=email)

    async def _sealed(
        self, partition: int, subject: str, events: list[Event]
    ) -> list[Event] | Rejection:
        """The events with their personal fields sealed with the subject's key."""
        if not any(personal_fields(type(e)) for e in events):
            return events
        try:
            key = await self._key(partition, subject)
        except SubjectErasedError as exc:
            return Rejection(exc.code, exc.message)
        return [seal_message(e, subject, key) for e in events]

    async def after_send(
        self, partition: int, delivered: Sequence[Delivered]
    ) -> Sequence[OutboundRecord]:
        """Phase two: outcomes, now that the events' offsets are known."""
        book = self.books[partition]
        results: list[OutboundRecord] = []
        decided: dict[uuid.UUID, CommandOutcome] = {}
        for item in self._pending.pop(partition, []):
            outcome = item.outcome
            if item.duplicate_of is not None:
                outcome = decided[item.duplicate_of].model_copy(update={"duplicate": True})
            elif item.event_count:
                outcome = outcome.model_copy(
                    update={
                        "events": [
                            EventPosition(
                                type=_type_of(d.record),
                                aggregate_version=version,
                                partition=d.partition,
                                offset=d.offset,
                            )
                            for version, d in enumerate(
                                delivered[item.first_output : item.first_output + item.event_count],
                                start=(outcome.version or 0) - item.event_count + 1,
                            )
                        ]
                    }
                )
            if not outcome.duplicate:
                decided[outcome.command_id] = outcome
                # Remembered before the commit: if the transaction aborts, the processor
                # rebuilds this book from Kafka, so nothing uncommitted survives.
                book.remember(book.outcomes, outcome, self.remembered)
            results.append(
                OutboundRecord.of(
                    self.topics.command_results, outcome.encode(), partition=partition
                )
            )
        ends = [d.offset + 1 for d in delivered if d.record.topic == self.topics.events]
        if ends:
            book.log_end = max(book.log_end, *ends)
        return results + self._snapshots(partition, book)

    def _snapshots(self, partition: int, book: PartitionBook) -> list[OutboundRecord]:
        """Snapshot records for this transaction, by the policy in command_service/snapshots."""
        if not self.snapshot_every or book.since_checkpoint < self.snapshot_every:
            return []
        out = []
        for _ in range(min(len(book.dirty), self.snapshots_per_transaction)):
            aggregate = book.dirty.pop()
            out.append(
                OutboundRecord(
                    self.topics.snapshots,
                    encode_state(book.aggregates[aggregate]),
                    aggregate.encode(),
                    [("type", b"Snapshot")],
                    partition,
                )
            )
        if not book.dirty:
            out.append(
                OutboundRecord(
                    self.topics.snapshots,
                    encode_checkpoint(book.log_end, len(book.aggregates), self.clock()),
                    CHECKPOINT_KEY,
                    [("type", b"Checkpoint")],
                    partition,
                )
            )
            log.info(
                "snapshot_checkpoint",
                partition=partition,
                next_offset=book.log_end,
                snapshots=len(out) - 1,
                aggregates=len(book.aggregates),
            )
            book.since_checkpoint = 0
        return out


def _issuer_refusal(command: Command, issued_by: str | None) -> Rejection | None:
    """A command only the system may issue, sent by someone else: refused, with what to do
    instead (alone it would do half a job: EraseSubject without deleting the key, say)."""
    if not command.issuers or issued_by in command.issuers:
        return None
    return Rejection(
        "system_command",
        f"{command.message_type} is issued by the system itself "
        f"({', '.join(sorted(command.issuers))}), not by clients: {command.instead}",
    )


def _placeholder(command_id: uuid.UUID) -> CommandOutcome:
    return CommandOutcome(command_id=command_id, status="rejected")


def _type_of(record: OutboundRecord) -> str:
    for key, value in record.headers:
        if key == "type":
            return value.decode()
    return "unknown"


def _recover_command_id(value: bytes | None) -> uuid.UUID | None:
    """The command id of a bad record, when one can be read, so its sender hears back."""
    try:
        obj: Any = json.loads(value or b"")
        return uuid.UUID(str(obj["command_id"]))
    except (ValueError, TypeError, KeyError):
        return None


__all__ = [
    "AuthorDirectory",
    "CommandHandler",
    "PartitionBook",
    "PartitionHistory",
    "SubjectKeys",
]
