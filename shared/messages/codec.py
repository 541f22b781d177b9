"""JSON encoding of messages, with the envelope mirrored into Kafka headers.

Headers let a non-Python client (or a router) see `type`, ids and versions without parsing the
body. The body is authoritative: on decode, headers are ignored.

Decoding never raises anything but a `MessageError` subclass, whatever the bytes are, so a
consumer can always turn a bad record into a rejection or a dead-letter record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import ValidationError

from shared.errors import (
    InvalidPayloadError,
    MalformedRecordError,
    UnknownMessageTypeError,
    UnsupportedSchemaVersionError,
)
from shared.messages.base import (
    COMMANDS,
    EVENTS,
    Command,
    CommandEnvelope,
    Event,
    EventEnvelope,
    MessageRegistry,
)

Headers = list[tuple[str, bytes]]
CONTENT_TYPE = "application/json"
MAX_RECORD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class EncodedMessage:
    """A message ready for Kafka: key (aggregate id), JSON value, headers."""

    key: bytes
    value: bytes
    headers: Headers = field(default_factory=list)


C = TypeVar("C", bound=Command)
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class DecodedCommand(Generic[C]):
    envelope: CommandEnvelope
    payload: C


@dataclass(frozen=True)
class DecodedEvent(Generic[E]):
    envelope: EventEnvelope
    payload: E


def _headers(values: dict[str, Any]) -> Headers:
    out: Headers = [("content-type", CONTENT_TYPE.encode())]
    for name, value in values.items():
        if value is None:
            continue
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        out.append((name, text.encode()))
    return out


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def encode_command(
    command: Command,
    *,
    command_id: UUID,
    aggregate_id: str,
    expected_version: int | None = None,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    issued_by: str | None = None,
) -> EncodedMessage:
    """Encode a command as the documented command record (key = aggregate id)."""
    envelope = CommandEnvelope(
        type=command.message_type,
        command_id=command_id,
        aggregate_id=aggregate_id,
        expected_version=expected_version,
        issued_by=issued_by,
        schema_version=command.schema_version,
        occurred_at=occurred_at,
        correlation_id=correlation_id or str(command_id),
        causation_id=causation_id,
        payload=command.model_dump(mode="json"),
    )
    body = envelope.model_dump(mode="json", exclude_none=True)
    return EncodedMessage(
        key=aggregate_id.encode(),
        value=_dumps(body),
        headers=_headers(
            {
                "type": envelope.type,
                "message_id": envelope.command_id,
                "schema_version": envelope.schema_version,
                "aggregate_id": aggregate_id,
                "expected_version": expected_version,
                "correlation_id": envelope.correlation_id,
                "causation_id": causation_id,
                "issued_by": issued_by,
            }
        ),
    )


def encode_event(
    event: Event,
    *,
    event_id: UUID,
    aggregate_id: str,
    aggregate_version: int,
    occurred_at: datetime,
    command_id: UUID | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> EncodedMessage:
    """Encode an event for the event log (key = aggregate id)."""
    envelope = EventEnvelope(
        type=event.message_type,
        event_id=event_id,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        schema_version=event.schema_version,
        occurred_at=occurred_at,
        command_id=command_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=event.model_dump(mode="json"),
    )
    body = envelope.model_dump(mode="json", exclude_none=True)
    return EncodedMessage(
        key=aggregate_id.encode(),
        value=_dumps(body),
        headers=_headers(
            {
                "type": envelope.type,
                "message_id": event_id,
                "schema_version": envelope.schema_version,
                "aggregate_id": aggregate_id,
                "aggregate_version": aggregate_version,
                "occurred_at": occurred_at,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
            }
        ),
    )


def _parse_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise MalformedRecordError("record has no value (tombstone?)")
    if len(value) > MAX_RECORD_BYTES:
        raise MalformedRecordError(f"record of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRecordError(f"record value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedRecordError(f"record value must be a JSON object, got {type(obj).__name__}")
    return obj


def _errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        out.append(f"{loc}: {err['msg']}")
    return out


def _payload(
    registry: MessageRegistry[Any], message_type: str, version: int, payload: dict[str, Any]
) -> Any:
    cls = registry.get(message_type)
    if version > cls.schema_version:
        raise UnsupportedSchemaVersionError(
            f"{message_type} schema_version {version} is newer than the "
            f"supported {cls.schema_version}"
        )
    try:
        payload = registry.upcast(message_type, version, payload)
    except KeyError as exc:
        raise UnsupportedSchemaVersionError(str(exc.args[0])) from None
    try:
        return cls.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(message_type, _errors(exc)) from None


def decode_command(value: bytes | None) -> DecodedCommand[Command]:
    """Parse a command record. Raises only `MessageError` subclasses, with the reason."""
    obj = _parse_object(value)
    message_type = obj.get("type")
    if isinstance(message_type, str) and message_type not in COMMANDS:
        raise UnknownMessageTypeError(message_type, list(COMMANDS.types()))
    try:
        envelope = CommandEnvelope.model_validate(obj)
    except ValidationError as exc:
        raise MalformedRecordError("invalid command envelope: " + "; ".join(_errors(exc))) from None
    payload = _payload(COMMANDS, envelope.type, envelope.schema_version, envelope.payload)
    return DecodedCommand(envelope=envelope, payload=payload)


def decode_event(value: bytes | None) -> DecodedEvent[Event]:
    """Parse an event record, upcasting older schema versions to the current model."""
    obj = _parse_object(value)
    message_type = obj.get("type")
    if isinstance(message_type, str) and message_type not in EVENTS:
        raise UnknownMessageTypeError(message_type, list(EVENTS.types()))
    try:
        envelope = EventEnvelope.model_validate(obj)
    except ValidationError as exc:
        raise MalformedRecordError("invalid event envelope: " + "; ".join(_errors(exc))) from None
    payload = _payload(EVENTS, envelope.type, envelope.schema_version, envelope.payload)
    return DecodedEvent(envelope=envelope, payload=payload)


def utcnow() -> datetime:
    """The one clock read of the shells; the domain receives time as a value."""
    return datetime.now(UTC)
