"""Deduplication: a command id is decided once; a repeat gets the first outcome, marked
`duplicate`, and appends nothing.

The owner of a partition remembers the outcomes of its commands (`OutcomeBook`, bounded), from
two sources restored at assignment: the results topic (every outcome, rejections included)
and the event log (the command id in each event's envelope, in case its outcome was lost). A
batch (`BatchOutcomes`) also catches a command id repeated inside itself, whose first outcome
is only complete once the events' offsets are known.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import MessageError
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord
from shared.messages.base import EventEnvelope
from shared.messages.results import CommandOutcome, EventPosition


class OutcomeBook:
    """The outcomes a partition's owner remembers, at most `limit` of each source (oldest
    forgotten first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outcomes: OrderedDict[uuid.UUID, CommandOutcome] = OrderedDict()
        self.logged: OrderedDict[uuid.UUID, CommandOutcome] = OrderedDict()

    def previous(self, command_id: uuid.UUID) -> CommandOutcome | None:
        return self.outcomes.get(command_id) or self.logged.get(command_id)

    def remember(self, outcome: CommandOutcome) -> None:
        self._keep(self.outcomes, outcome)

    def restore_outcomes(self, records: Sequence[InboundRecord]) -> None:
        for record in records:
            try:
                outcome = CommandOutcome.decode(record.value)
            except MessageError:
                continue
            if not outcome.duplicate:
                self.remember(outcome)

    def restore_event(self, env: EventEnvelope, record: InboundRecord) -> None:
        """An event of the log: its command was accepted (events of one command add up)."""
        if env.command_id is None:
            return
        previous = self.logged.get(env.command_id)
        position = EventPosition(
            type=env.type,
            aggregate_version=env.aggregate_version,
            partition=record.partition,
            offset=record.offset,
        )
        events = [*previous.events, position] if previous else [position]
        self._keep(
            self.logged,
            CommandOutcome(
                command_id=env.command_id,
                status="accepted",
                aggregate_id=env.aggregate_id,
                version=env.aggregate_version,
                events=events,
            ),
        )

    def _keep(self, book: OrderedDict[uuid.UUID, CommandOutcome], outcome: CommandOutcome) -> None:
        book[outcome.command_id] = outcome
        book.move_to_end(outcome.command_id)
        if len(book) > self.limit:
            book.popitem(last=False)


@dataclass
class _Pending:
    """An outcome waiting for the offsets of its events (phase two of the transaction)."""

    outcome: CommandOutcome
    first_output: int = 0
    event_count: int = 0
    duplicate_of: uuid.UUID | None = None


class BatchOutcomes:
    """The outcomes of one batch, in the order of its records, completed after the send."""

    def __init__(self, book: OutcomeBook) -> None:
        self.book = book
        self._pending: list[_Pending] = []
        self._decided: set[uuid.UUID] = set()

    def repeat(self, command_id: uuid.UUID) -> bool:
        """Whether the command was decided before (in this batch or earlier); if so its
        outcome is queued as a duplicate and it must not be decided again."""
        if command_id in self._decided:
            placeholder = CommandOutcome(command_id=command_id, status="rejected")
            self._pending.append(_Pending(placeholder, duplicate_of=command_id))
            return True
        previous = self.book.previous(command_id)
        if previous is not None:
            self._pending.append(_Pending(previous.model_copy(update={"duplicate": True})))
            return True
        return False

    def refused(self, outcome: CommandOutcome) -> None:
        """The answer to a record that could not be read (no decision, never a repeat)."""
        self._pending.append(_Pending(outcome))

    def decided(
        self, outcome: CommandOutcome, *, first_output: int = 0, event_count: int = 0
    ) -> None:
        """A decision; its events are outputs [first_output, first_output + event_count)."""
        self._decided.add(outcome.command_id)
        self._pending.append(_Pending(outcome, first_output, event_count))

    def complete(self, delivered: Sequence[Delivered]) -> list[CommandOutcome]:
        """Every outcome with the positions of its events; decisions are remembered."""
        done: dict[uuid.UUID, CommandOutcome] = {}
        outcomes = []
        for item in self._pending:
            outcome = item.outcome
            if item.duplicate_of is not None:
                outcome = done[item.duplicate_of].model_copy(update={"duplicate": True})
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
                done[outcome.command_id] = outcome
                # Remembered before the commit: if the transaction aborts, the processor
                # rebuilds this book from Kafka, so nothing uncommitted survives.
                self.book.remember(outcome)
            outcomes.append(outcome)
        return outcomes


def _type_of(record: OutboundRecord) -> str:
    for key, value in record.headers:
        if key == "type":
            return value.decode()
    return "unknown"


__all__ = ["BatchOutcomes", "OutcomeBook"]
