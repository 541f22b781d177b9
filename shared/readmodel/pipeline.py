"""The one read pipeline: log records or stored rows -> readable events -> views.

    decode -> upcast -> open personal fields -> fold

Every reader of the event log goes through here. The projector and the rebuild turn records into
`IndexedEvent`s with `read_records` (decode and upcast: `shared.messages.codec.decode_event`);
the read store folds them with `views.fold_batch` and stores each with its payload in the current
schema. Reading a stored row back, the read store upcasts it (`upcast_row`: rows written by older
code) and the query API turns rows into events (`event_of_row`) to fold a view as it was
(`views.fold`), or opens their personal fields (`open_rows`, `open_author`). Personal fields are
opened last, on the way out: the read store keeps them sealed, so erasing a subject's key
shreds them there too.

The rule for an event that cannot be read. A record that does not decode (not JSON, unknown
type, invalid payload, schema newer than the code) yields an `Unreadable` in its place: its
position (partition, offset) and the reason. An unreadable event is never folded into a view
and never stops the stream: the events after it are read and folded. It is always logged, with
its position and reason, by the caller, whose one further action is its own:

* the live projector counts it (`esctl_projector_dead_letters_total`), logs
  `event_dead_lettered` and parks the record in the dead-letter topic with the reason;
* the rebuild logs `rebuild_skipped_event` and skips it (the live projector parks the record
  when it meets it; a rebuild replays the log and writes to no topic).

Stored rows are events this pipeline read once (the projector stores only readable events), so
reading them back yields no `Unreadable`: an older schema is upcast. A row that the running code
cannot read at all (written by a newer projector: deploy readers before writers) fails the query
with the error, rather than answer with a view folded past a gap.

No I/O here: the callers fetch records, rows and keys, and write what comes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import MessageError
from shared.kafka.records import InboundRecord
from shared.messages.base import EVENTS, Event, EventEnvelope
from shared.messages.codec import decode_event
from shared.personal import open_tree, subjects_in
from shared.readmodel.views import View


@dataclass(frozen=True)
class IndexedEvent:
    """One decoded event with its position in the log, ready to be applied."""

    envelope: EventEnvelope
    payload: Event
    partition: int
    offset: int


@dataclass(frozen=True)
class Unreadable:
    """A record that did not read as an event, in its place: the record and why."""

    record: InboundRecord
    error: MessageError

    @property
    def partition(self) -> int:
        return self.record.partition

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def reason(self) -> str:
        return self.error.message


def read_record(record: InboundRecord) -> IndexedEvent | Unreadable:
    """The event of a record, decoded and upcast to its current schema, or why it is not one."""
    try:
        decoded = decode_event(record.value)
    except MessageError as exc:
        return Unreadable(record, exc)
    return IndexedEvent(decoded.envelope, decoded.payload, record.partition, record.offset)


def read_records(
    records: Iterable[InboundRecord],
) -> tuple[list[IndexedEvent], list[Unreadable]]:
    """The readable events of `records` in log order, and the unreadable ones, in order too."""
    events: list[IndexedEvent] = []
    unreadable: list[Unreadable] = []
    for record in records:
        read = read_record(record)
        if isinstance(read, Unreadable):
            unreadable.append(read)
        else:
            events.append(read)
    return events, unreadable


def upcast_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored event row with its payload in the current schema (the read store keeps each
    payload in the version that wrote it). Changes `row` in place and returns it."""
    current = EVENTS.get(row["type"]).schema_version
    if row["schema_version"] < current:  # written by older code
        row["payload"] = EVENTS.upcast(row["type"], row["schema_version"], row["payload"])
        row["schema_version"] = current
    return row


def event_of_row(row: Mapping[str, Any]) -> IndexedEvent:
    """The event of a stored row as the read store returns it (upcast by `upcast_row`)."""
    envelope = EventEnvelope(
        type=row["type"],
        event_id=row["event_id"],
        aggregate_id=row["aggregate_id"],
        aggregate_version=row["aggregate_version"],
        occurred_at=row["occurred_at"],
        schema_version=row["schema_version"],
        actor=row.get("actor"),
    )
    payload = EVENTS.get(row["type"]).model_validate(row["payload"])
    return IndexedEvent(envelope, payload, row["log_partition"], row["log_offset"])


class KeyReader(Protocol):
    """Opens personal fields: the keys of the subjects that still have one."""

    async def keys(self, subjects: Iterable[str]) -> dict[str, bytes]: ...


async def open_rows(rows: list[dict[str, Any]], keys: KeyReader) -> list[dict[str, Any]]:
    """Stored event rows with their personal fields opened; a field whose subject was erased
    reads as None and is listed in the row's `erased_fields`. Changes `rows` in place."""
    found = await keys.keys(subjects_in([row["payload"] for row in rows]))
    for row in rows:
        row["payload"], row["erased_fields"] = open_tree(row["payload"], found)
    return rows


async def open_author(view: View, keys: KeyReader) -> dict[str, Any]:
    """An author view for people: name and email opened, or None and listed as erased."""
    out = dict(view)
    if out.get("erased_at") is not None:  # then there is no key to look up
        out.update(name=None, email=None, erased=True, erased_fields=["name", "email"])
        return out
    found = await keys.keys([view["author_id"]])
    opened, gone = open_tree({"name": out["name"], "email": out["email"]}, found)
    out.update(opened, erased=bool(gone), erased_fields=gone)
    return out
