"""The outcome of a command, as written to the command-results topic.

Key: the command id. Partition: the partition number of the command (not a hash of the key), so
the owner of commands partition p finds every outcome it ever wrote in results partition p,
which is what makes idempotency survive restarts and partition moves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import MalformedRecordError
from shared.messages.codec import EncodedMessage


class EventPosition(BaseModel):
    """Where one event of the outcome landed in the event log."""

    model_config = ConfigDict(frozen=True)

    type: str
    aggregate_version: int
    partition: int
    offset: int


class CommandOutcome(BaseModel):
    """Accepted (with the events and their positions) or rejected (with code and reason)."""

    model_config = ConfigDict(frozen=True)

    command_id: UUID
    status: Literal["accepted", "rejected"]
    command_type: str | None = None
    aggregate_id: str | None = None
    version: int | None = Field(
        default=None, description="aggregate version after the command (current if rejected)"
    )
    events: list[EventPosition] = Field(default_factory=list)
    code: str | None = None
    message: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    duplicate: bool = Field(default=False, description="a repeat of an already processed id")
    processed_at: datetime | None = None

    @property
    def consistency_token(self) -> str | None:
        """`<partition>:<offset>` of the last event: readers wait until a projection passed it."""
        if not self.events:
            return None
        last = self.events[-1]
        return f"{last.partition}:{last.offset}"

    def encode(self) -> EncodedMessage:
        value = self.model_dump_json(exclude_none=True).encode()
        headers = [
            ("type", b"CommandOutcome"),
            ("status", self.status.encode()),
            ("content-type", b"application/json"),
        ]
        if self.code:
            headers.append(("code", self.code.encode()))
        return EncodedMessage(key=str(self.command_id).encode(), value=value, headers=headers)

    @classmethod
    def decode(cls, value: bytes | None) -> CommandOutcome:
        try:
            return cls.model_validate_json(value or b"")
        except (ValueError, ValidationError) as exc:
            raise MalformedRecordError(f"not a command outcome: {exc}") from None
