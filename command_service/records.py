"""Command records in: read with the record-level checks, refused (dead-lettered and answered)
when they cannot be read, or re-routed to the partition that owns their aggregate.

A record that cannot be read is not a domain rejection: no decision was made. Its codes are
those of the codec (`shared/errors.py`) and the three checks below, listed in `RECORD_CODES`;
the HTTP edge (`command_service/api.py`) says which status answers each.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import (
    InvalidPayloadError,
    MalformedRecordError,
    MessageError,
    UnknownMessageTypeError,
    UnsupportedSchemaVersionError,
)
from shared.kafka.clients import partition_for_key
from shared.kafka.records import InboundRecord, OutboundRecord, dead_letter
from shared.kafka.topics import Topics
from shared.messages.base import Command
from shared.messages.codec import DecodedCommand, decode_command
from shared.messages.results import CommandOutcome

RECORD_TOO_LARGE = "record_too_large"
MISSING_KEY = "missing_key"
KEY_MISMATCH = "key_mismatch"

#: every code a command record that cannot be read is answered with
RECORD_CODES = (
    MalformedRecordError.code,
    UnknownMessageTypeError.code,
    InvalidPayloadError.code,
    UnsupportedSchemaVersionError.code,
    MISSING_KEY,
    KEY_MISMATCH,
    RECORD_TOO_LARGE,
)


@dataclass(frozen=True)
class Refused:
    """A record that could not be read: its dead-letter copy, and the answer for its sender
    when the record names a readable command id."""

    dead_letter: OutboundRecord
    outcome: CommandOutcome | None


class CommandRecords:
    """Reads the command records of one topic (`topics.commands`, `partitions` partitions)."""

    def __init__(self, topics: Topics, partitions: int, max_command_bytes: int) -> None:
        self.topics = topics
        self.partitions = partitions
        self.max_command_bytes = max_command_bytes

    def read(self, record: InboundRecord) -> DecodedCommand[Command]:
        """The command of a record; MessageError (with a record-level code) when unreadable."""
        size = len(record.value or b"")
        if size > self.max_command_bytes:
            raise MessageError(
                f"command record of {size} bytes exceeds the limit of {self.max_command_bytes}",
                code=RECORD_TOO_LARGE,
            )
        if not record.key:
            raise MessageError(
                "command record has no key; the key must be the aggregate id", code=MISSING_KEY
            )
        command = decode_command(record.value)
        if record.key != command.envelope.aggregate_id.encode():
            raise MessageError(
                f"record key {record.key.decode(errors='replace')!r} differs from aggregate_id "
                f"{command.envelope.aggregate_id!r}; the key must be the aggregate id",
                code=KEY_MISMATCH,
            )
        return command

    def refuse(self, record: InboundRecord, error: MessageError, now: datetime) -> Refused:
        command_id = _recover_command_id(record.value)
        outcome = None
        if command_id is not None:
            outcome = CommandOutcome(
                command_id=command_id,
                status="rejected",
                code=error.code,
                message=error.message,
                processed_at=now,
            )
        return Refused(dead_letter(record, error, self.topics.commands_dlq), outcome)

    @staticmethod
    def command_id(record: InboundRecord) -> uuid.UUID | None:
        """The command id of a record (its `message_id` header, else its body), if readable."""
        header = record.header("message_id")
        if header is not None:
            with contextlib.suppress(ValueError):
                return uuid.UUID(header)
        return _recover_command_id(record.value)

    @staticmethod
    def command_type(record: InboundRecord) -> str | None:
        """The command type a record's body names, if readable."""
        try:
            obj: Any = json.loads(record.value or b"")
            kind = obj["type"]
        except (ValueError, TypeError, KeyError):
            return None
        return kind if isinstance(kind, str) else None

    def reroute(self, record: InboundRecord, partition: int) -> OutboundRecord | None:
        """The record bound for the partition that owns its key, when it arrived on another.

        Produced with another partitioner (librdkafka's default is CRC32), it is moved there
        inside this transaction, undecided.
        """
        right = partition_for_key(record.key or b"", self.partitions)
        if right == partition:
            return None
        return OutboundRecord(
            self.topics.commands,
            record.value,
            key=record.key,
            partition=right,
            headers=[*record.headers, ("rerouted-from", str(partition).encode())],
        )


def _recover_command_id(value: bytes | None) -> uuid.UUID | None:
    """The command id of a bad record, when one can be read, so its sender hears back."""
    try:
        obj: Any = json.loads(value or b"")
        return uuid.UUID(str(obj["command_id"]))
    except (ValueError, TypeError, KeyError):
        return None


__all__ = ["RECORD_CODES", "CommandRecords", "Refused"]
