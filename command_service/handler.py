"""The command handler: the single writer of its partitions of the event log.

Runs inside the partition-owned transactional processor. For commands partition p it holds the
state of every aggregate of events partition p (same key, same partition count) and the
outcomes of the commands it processed, both restored from Kafka when p is assigned:

* events partition p  -> aggregate states (and the ids of commands that produced events),
* results partition p -> outcomes, including rejections (which left no event).

Per batch, in ONE transaction: events to events partition p, outcomes (with the events'
offsets) to results partition p, bad records to the dead-letter topic, misrouted commands to
their right partition, snapshots, and the consumed offsets.

One command, in order: its record is read (`records`: refused or re-routed when it must be),
deduplicated (`dedup`), its issuer, actor and author checked (`authors`), its aggregate's state
loaded, decided on by the pure domain (`domain`, ownership included), its events encoded with
their personal fields sealed and its actor recorded (`encoder`) and folded into the state;
after the send, its outcome names the events' offsets and the snapshot policy
(`snapshot_policy`) adds what is due.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

from prometheus_client import Counter, Gauge, Histogram

from command_service.authors import AuthorCheck, actor_of, issuer_refusal
from command_service.book import PartitionBook
from command_service.dedup import BatchOutcomes, OutcomeBook
from command_service.domain import Decision, Rejection, decide, evolve
from command_service.encoder import EventEncoder, Written
from command_service.ports import AuthorDirectory, PartitionHistory, SubjectKeys
from command_service.records import CommandRecords
from command_service.snapshot_policy import SnapshotPolicy
from shared import tracing
from shared.errors import MessageError
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord
from shared.kafka.topics import Topics
from shared.keystore import SubjectErasedError
from shared.logging import get_logger, message_context
from shared.messages.base import Command
from shared.messages.blog import CreatePost, RenameAuthor
from shared.messages.codec import DecodedCommand, Headers
from shared.messages.results import CommandOutcome

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
RESTORING = Gauge(
    "esctl_partition_restoring",
    "1 while an assigned partition's state is being restored, 0 once it is (owned partitions)",
    ["partition"],
)


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
        self.history = history
        self.clock = clock
        self.remembered = remembered_outcomes
        self.records = CommandRecords(topics, partitions, max_command_bytes)
        self.authors = AuthorCheck(authors, author_wait_s)
        self.encoder = EventEncoder(topics.events, keys)
        self.snapshots = SnapshotPolicy(
            topics.snapshots, clock, snapshot_every, snapshots_per_transaction
        )
        self.books: dict[int, PartitionBook] = {}
        self._batches: dict[int, BatchOutcomes] = {}
        #: tracing on: per partition, the trace headers of each command of the batch (by id)
        self._trace_headers: dict[int, dict[UUID, Headers]] = {}
        #: partitions being restored now (for readiness: /health answers 503 meanwhile)
        self.restoring: set[int] = set()

    # -- restore -----------------------------------------------------------------------------

    async def on_assigned(self, partition: int) -> None:
        self.restoring.add(partition)
        RESTORING.labels(str(partition)).set(1)
        try:
            await self._restore(partition)
        finally:
            self.restoring.discard(partition)
            RESTORING.labels(str(partition)).set(0)

    async def _restore(self, partition: int) -> None:
        book = PartitionBook(OutcomeBook(self.remembered))
        with RESTORE_SECONDS.time():
            start = await self.snapshots.load(self.history, partition, book)
            book.log_end = await self.history.replay(
                partition, book.fold_events, book.outcomes.restore_outcomes, events_from=start
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
            outcomes=len(book.outcomes.outcomes),
        )

    async def on_revoked(self, partition: int) -> None:
        with contextlib.suppress(KeyError):  # the series of partitions owned now only
            RESTORING.remove(str(partition))
        self.books.pop(partition, None)
        self.encoder.forget(partition)
        self._batches.pop(partition, None)
        self._trace_headers.pop(partition, None)

    # -- decide ------------------------------------------------------------------------------

    async def handle(
        self, partition: int, records: Sequence[InboundRecord]
    ) -> Sequence[OutboundRecord]:
        """Phase one: the batch's events (and dead letters, re-routed commands)."""
        book = self.books[partition]
        now = self.clock()
        await self.encoder.prefetch(partition, records)
        batch = BatchOutcomes(book.outcomes)
        outputs: list[OutboundRecord] = []
        BATCH_SIZE.observe(len(records))
        for record in records:
            # tracing on: one span per command, child of the context its record carries;
            # the records it makes carry that span's context (off: one test per record)
            traced = self._trace_start(record) if tracing.ENABLED else None
            first = len(outputs)
            try:
                try:
                    command = self.records.read(record)
                except MessageError as exc:
                    refused = self.records.refuse(record, exc, now)
                    outputs.append(refused.dead_letter)
                    if refused.outcome is not None:
                        batch.refused(refused.outcome)
                    log.warning(
                        "command_record_rejected",
                        partition=partition,
                        offset=record.offset,
                        code=exc.code,
                        error=exc.message,
                    )
                    continue
                moved = self.records.reroute(record, partition)
                if moved is not None:
                    outputs.append(moved)
                    continue
                env = command.envelope
                with message_context(
                    correlation_id=env.correlation_id, message_id=str(env.command_id)
                ):
                    if batch.repeat(env.command_id):
                        continue
                    await self._decide(book, partition, command, now, outputs, batch)
            finally:
                if traced is not None:
                    self._trace_end(traced, partition, record, outputs, first)
        self._batches[partition] = batch
        return outputs

    async def _decide(
        self,
        book: PartitionBook,
        partition: int,
        command: DecodedCommand[Command],
        now: datetime,
        outputs: list[OutboundRecord],
        batch: BatchOutcomes,
    ) -> None:
        env, payload = command.envelope, command.payload
        # Only with a timezone: other clients may send naive times, which cannot be compared.
        if env.occurred_at is not None and env.occurred_at.tzinfo is not None:
            QUEUE_SECONDS.observe(max(0.0, (now - env.occurred_at).total_seconds()))
        state = book.aggregates.get(env.aggregate_id)
        current = state.version if state else 0
        decision: Decision | None = issuer_refusal(payload, env.issued_by)
        if decision is None:
            author_exists = isinstance(payload, CreatePost) and await self.authors.exists(
                payload.author_id, book.aggregates
            )
            decision = decide(
                payload,
                # a rename compares names: the decision sees the author's opened state
                await self.encoder.opened(partition, state)
                if isinstance(payload, RenameAuthor)
                else state,
                aggregate_id=env.aggregate_id,
                expected_version=env.expected_version,
                author_exists=author_exists,
                actor=actor_of(env),
            )
        base = {
            "command_id": env.command_id,
            "command_type": env.type,
            "aggregate_id": env.aggregate_id,
            "processed_at": now,
        }
        written: list[Written] = []
        if not isinstance(decision, Rejection):
            try:
                written = await self.encoder.encode(
                    partition, env, decision, version=current, at=now
                )
            except SubjectErasedError as exc:
                decision = Rejection(exc.code, exc.message)
        if isinstance(decision, Rejection):
            COMMANDS_TOTAL.labels("rejected", decision.code).inc()
            batch.decided(
                CommandOutcome(
                    **base,
                    status="rejected",
                    version=current,
                    code=decision.code,
                    message=decision.message,
                    details=decision.details,
                )
            )
            return
        # The state folds the events as written (sealed): what a restore from the log holds.
        for item in written:
            state = evolve(state, item.event, aggregate_id=env.aggregate_id, at=now)
        if state is not None:
            book.keep(env.aggregate_id, state, len(written))
        COMMANDS_TOTAL.labels("accepted", "").inc()
        batch.decided(
            CommandOutcome(**base, status="accepted", version=current + len(written)),
            first_output=len(outputs),
            event_count=len(written),
        )
        outputs.extend(item.record for item in written)

    def _trace_start(self, record: InboundRecord) -> tuple[Any, object]:
        return tracing.start_record(record, f"decide {record.header('type') or 'command'}")

    def _trace_end(
        self,
        traced: tuple[Any, object],
        partition: int,
        record: InboundRecord,
        outputs: list[OutboundRecord],
        first: int,
    ) -> None:
        """The command's records (events, dead letter, re-routed command) carry its span; so
        will its outcome (`after_send`)."""
        tracing.traced_since(outputs, first)
        if record.header("type") is None:  # a record without headers (kcat): name it by its body
            traced[0].update_name(f"decide {self.records.command_type(record) or 'command'}")
        command_id = self.records.command_id(record)
        if command_id is not None:
            self._trace_headers.setdefault(partition, {})[command_id] = tracing.inject([])
        tracing.end(traced, sys.exc_info()[1])  # runs in a `finally`: the error, if any

    async def after_send(
        self, partition: int, delivered: Sequence[Delivered]
    ) -> Sequence[OutboundRecord]:
        """Phase two: outcomes, now that the events' offsets are known; then the snapshots
        the policy says are due."""
        book = self.books[partition]
        batch = self._batches.pop(partition, None)
        outcomes = batch.complete(delivered) if batch is not None else []
        results = [
            OutboundRecord.of(self.topics.command_results, o.encode(), partition=partition)
            for o in outcomes
        ]
        if tracing.ENABLED:
            spans = self._trace_headers.pop(partition, {})
            results = [
                replace(r, headers=[*r.headers, *spans.get(o.command_id, ())])
                for r, o in zip(results, outcomes, strict=True)
            ]
        ends = [d.offset + 1 for d in delivered if d.record.topic == self.topics.events]
        if ends:
            book.log_end = max(book.log_end, *ends)
        return results + self.snapshots.records(partition, book)


__all__ = ["CommandHandler"]
