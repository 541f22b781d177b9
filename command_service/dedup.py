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
from typing import TypeVar

from shared.errors import MessageError
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord
from shared.messages.base import EventEnvelope
from shared.messages.results import CommandOutcome, EventPosition

_V = TypeVar("_V")

#: An event's command as the book keeps it: (aggregate id, version, its events' positions as
#: (type, aggregate version, partition, offset)).
_Logged = tuple[str, int, tuple[tuple[str, int, int, int], ...]]


class OutcomeBook:
    """The outcomes a partition's owner remembers, at most `limit` of each source (oldest
    forgotten first).

    Kept compact, since a busy partition holds `limit` of them for hours: an outcome as its JSON
    (about 300 B; a `CommandOutcome` model took 2.2 KB), decoded only when its command comes
    again, which is rare; an event's command as a tuple of its positions."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outcomes: OrderedDict[uuid.UUID, bytes] = OrderedDict()
        self.logged: OrderedDict[uuid.UUID, _Logged] = OrderedDict()

    def previous(self, command_id: uuid.UUID) -> CommandOutcome | None:
        value = self.outcomes.get(command_id)
        if value is not None:
            return CommandOutcome.decode(value)
        logged = self.logged.get(command_id)
        if logged is None:
            return None
        aggregate_id, version, events = logged
        return CommandOutcome(
            command_id=command_id,
            status="accepted",
            aggregate_id=aggregate_id,
            version=version,
            events=[
                EventPosition(type=t, aggregate_version=v, partition=p, offset=o)
                for t, v, p, o in events
            ],
        )

    def remember(self, outcome: CommandOutcome) -> None:
        self._keep(
            self.outcomes, outcome.command_id, outcome.model_dump_json(exclude_none=True).encode()
        )

    def restore_outcomes(self, records: Sequence[InboundRecord]) -> None:
        for record in records:
            try:
                outcome = CommandOutcome.decode(record.value)
            except MessageError:
                continue
            if not outcome.duplicate and record.value is not None:
                self._keep(self.outcomes, outcome.command_id, bytes(record.value))

    def restore_event(self, env: EventEnvelope, record: InboundRecord) -> None:
        """An event of the log: its command was accepted (events of one command add up)."""
        if env.command_id is None:
            return
        previous = self.logged.get(env.command_id)
        position = (env.type, env.aggregate_version, record.partition, record.offset)
        events = (*previous[2], position) if previous else (position,)
        self._keep(self.logged, env.command_id, (env.aggregate_id, env.aggregate_version, events))

    def _keep(self, book: OrderedDict[uuid.UUID, _V], command_id: uuid.UUID, value: _V) -> None:
        book[command_id] = value
        book.move_to_end(command_id)
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
